"""GPT-B on seeded weights reproduces the original's logits and greedy CFG sequences (tests/data/parity), for the
released 1D GPT (gpt_1d.py) and the 2D-RoPE GPT (GPT_models_2d, the original's gpt.py)."""
from __future__ import annotations

import pytest
import torch

from autoregressive import generate
from autoregressive.models.gpt import GPT_models, GPT_models_2d

from testlib import PARITY, seeded_state_dict

FILES = {"1d": "GPT-B_seed0.pt", "2d": "GPT-B_2d_seed0.pt"}


@pytest.fixture(scope="module", params=sorted(FILES))
def gpt_b(request):
    ref = torch.load(PARITY / FILES[request.param], weights_only=True)
    two_d = request.param == "2d"
    assert ref["model"] == "GPT-B" and ref["seed"] == 0 and bool(ref.get("gpt_2d", False)) == two_d
    registry = GPT_models_2d if two_d else GPT_models
    model = registry["GPT-B"](vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1).eval()
    model.load_state_dict(seeded_state_dict(model.state_dict(), seed=ref["seed"]), strict=True)
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]
    return model, ref


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.slow
def test_teacher_forced_logits(gpt_b):
    model, ref = gpt_b
    with torch.inference_mode():
        logits, _ = model(ref["tokens"][:, :-1], ref["labels"])
    assert logits.shape == (2, 256, 16384)
    assert rel_err(logits[:, ::16], ref["logits_every16"]) < 1e-4
    assert torch.equal(logits.argmax(-1), ref["logits_argmax"])


@pytest.mark.slow
@pytest.mark.parametrize("key", ["greedy_constant", "greedy_step"])
def test_greedy_cfg_sequences(gpt_b, key):
    model, ref = gpt_b
    case = ref[key]
    tokens = generate(model, ref["labels"], 256, cfg_scale=case["cfg_scale"], cfg_schedule=case["cfg_schedule"],
                      cfg_schedule_kwargs=case["cfg_schedule_kwargs"], top_k=1, sample_logits=False)
    assert torch.equal(tokens, case["tokens"].long())
