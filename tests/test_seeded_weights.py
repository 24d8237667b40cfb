"""tests/seeded_weights.py fills state dicts exactly as the reference fill the parity vectors were made with.

tests/data/parity/seeded_fingerprints.json holds sha256 digests of the reference fill's output (see the README
there): per tensor for a template that hits every rule (norm scales, biases, BatchNorm statistics, conv and linear
kernels, other tensors, float16/bfloat16, integer and bool buffers) at three seeds, and of the whole state dicts of
VQ_SS256 and GPT-B at seed 0. Any change of rule, seeding or dtype handling changes a digest.
"""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from autoregressive import GPT_models
from tokenizer import build_tokenizer

from seeded_weights import seeded_state_dict, seeded_tensor
from testlib import CONFIGS, PARITY

FINGERPRINTS = json.loads((PARITY / "seeded_fingerprints.json").read_text())


def _raw(t: torch.Tensor) -> bytes:
    flat = t.contiguous().reshape(-1)
    return flat.numpy().tobytes() if t.dtype == torch.bool else flat.view(torch.uint8).numpy().tobytes()


def _template() -> dict[str, torch.Tensor]:
    out = {}
    for key, spec in FINGERPRINTS["template"].items():
        dtype = getattr(torch, spec["dtype"])
        if key in FINGERPRINTS["int_values"]:
            out[key] = torch.tensor(FINGERPRINTS["int_values"][key], dtype=dtype).reshape(spec["shape"])
        else:
            out[key] = torch.empty(spec["shape"], dtype=dtype)
    return out


@pytest.mark.parametrize("seed", sorted(FINGERPRINTS["sha256"]))
def test_every_rule_matches_the_reference_fill(seed):
    template = _template()
    filled = seeded_state_dict(template, seed=int(seed))
    assert list(filled) == list(template)
    for key, tensor in filled.items():
        assert tensor.dtype == template[key].dtype and tensor.shape == template[key].shape, key
        assert hashlib.sha256(_raw(tensor)).hexdigest() == FINGERPRINTS["sha256"][seed][key], key


def test_values_depend_on_key_and_seed_only():
    a = seeded_tensor("blocks.0.attn.qkv.weight", (96, 32), seed=0)
    assert torch.equal(a, seeded_tensor("blocks.0.attn.qkv.weight", [96, 32], seed=0))
    assert not torch.equal(a, seeded_tensor("blocks.1.attn.qkv.weight", (96, 32), seed=0))
    assert not torch.equal(a, seeded_tensor("blocks.0.attn.qkv.weight", (96, 32), seed=1))
    # the scalings the rules state
    assert (seeded_tensor("bn.running_var", (1000,)) >= 1).all()
    assert seeded_tensor("norm.weight", (4000,)).mean().item() == pytest.approx(1.0, abs=0.01)
    assert seeded_tensor("fc.weight", (100, 400)).std().item() == pytest.approx(400 ** -0.5, rel=0.05)
    assert seeded_tensor("conv.weight", (64, 4, 5, 5)).std().item() == pytest.approx(100 ** -0.5, rel=0.05)


def test_meta_templates_get_zero_integer_buffers():
    with torch.device("meta"):
        template = {"w": torch.empty(3, 3), "count": torch.empty(5, dtype=torch.long)}
    filled = seeded_state_dict(template)
    assert filled["w"].device.type == "cpu" and torch.equal(filled["count"], torch.zeros(5, dtype=torch.long))


def _model_digest(state_dict: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(state_dict):
        h.update(key.encode())
        h.update(_raw(state_dict[key]))
    return h.hexdigest()


@pytest.mark.slow
def test_whole_released_state_dicts_match_the_reference_fill():
    with torch.device("meta"):
        tok = build_tokenizer(CONFIGS / "VQ_SS256.yaml")
        gpt = GPT_models["GPT-B"](vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1)
    assert _model_digest(seeded_state_dict(tok.state_dict(), 0)) == FINGERPRINTS["models"]["VQ_SS256 seed 0"]
    assert _model_digest(seeded_state_dict(gpt.state_dict(), 0)) == FINGERPRINTS["models"]["GPT-B seed 0"]
