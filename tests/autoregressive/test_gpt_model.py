"""GPT structure: state-dict manifests, parameter counts, forward/KV-cache agreement, input checks."""
from __future__ import annotations

import json

import pytest
import torch

from autoregressive import GPT_models
from autoregressive.models.gpt import ModelArgs

from testlib import MANIFESTS, TINY_GPT, tiny_gpt

pytestmark = pytest.mark.usefixtures("single_thread")

# The original's gpt_1d.py presets (vocab 16384, block 256, 1000 classes, learned absolute positions).
PARAM_COUNTS = {
    "GPT-B": 111_085_824, "GPT-L": 343_174_144, "GPT-XL": 775_028_480, "GPT-XXL": 1_411_367_424,
    "GPT-XXXL": 3_893_685_760, "GPT-1B": 1_200_142_336, "GPT-3B": 3_097_481_600, "GPT-7B": 6_615_642_112,
}


def meta_model(name: str, **kwargs):
    with torch.device("meta"):
        return GPT_models[name](**kwargs)


@pytest.mark.parametrize("name", ["GPT-B", "GPT-XXL", "2d_GPT-B"])
def test_state_dict_matches_manifest(name):
    manifest = json.loads((MANIFESTS / f"gpt_{name}.json").read_text())
    if name.startswith("2d_"):
        with torch.device("meta"):
            sd = GPT_models[name[3:]](vocab_size=16384, block_size=256, num_classes=1000, gpt_2d=True).state_dict()
        assert len(sd) == 88 and sum(v.numel() for v in sd.values()) == 110_888_448  # the numbers
    else:
        sd = meta_model(name).state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == [(k, list(v)) for k, v in manifest["state_dict"].items()]
    assert len(sd) == manifest["num_keys"]
    assert sum(v.numel() for v in sd.values()) == manifest["num_params"]


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_counts(name):
    model = meta_model(name, vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1, model_type="c2i")
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]


def test_registry_and_arguments():
    assert set(PARAM_COUNTS) <= set(GPT_models)
    with pytest.raises(TypeError, match="unknown GPT arguments"):
        GPT_models["GPT-tiny"](vocab_sise=10)
    for flag in ("rope", "use_adaLN", "use_simple_adaLN"):  # the original's variants: refused when on, not fields
        with pytest.raises(NotImplementedError, match=flag):
            GPT_models["GPT-tiny"](**{flag: True})
        GPT_models["GPT-tiny"](**{flag: False})  # the off value still builds
        assert not hasattr(ModelArgs(), flag)
    GPT_models["GPT-tiny"](use_flash_attn=True)  # the original's kernel switch: inert
    with pytest.raises(NotImplementedError, match="c2i"):
        ModelArgs(model_type="t2i")
    with pytest.raises(ValueError, match="cls_token_num"):
        ModelArgs(cls_token_num=2)


def test_init_rules():
    model = GPT_models["GPT-tiny"](**TINY_GPT)
    assert torch.count_nonzero(model.output.weight) == 0
    assert torch.all(model.norm.weight == 1)
    assert model.cls_embedding.embedding_table.weight.shape == (TINY_GPT["num_classes"] + 1, 64)
    assert abs(model.tok_embeddings.weight.std().item() - 0.02) < 0.005


def test_qk_norm_keys():
    sd = GPT_models["GPT-tiny"](use_qk_norm=True, **TINY_GPT).state_dict()
    assert sd["layers.0.attention.q_norm.weight"].shape == (16,)
    assert sd["layers.0.attention.k_norm.bias"].shape == (16,)


def test_forward_shapes_and_loss():
    model = tiny_gpt()
    tokens = torch.randint(0, TINY_GPT["vocab_size"], (3, TINY_GPT["block_size"]))
    labels = torch.tensor([0, 5, 9])
    logits, loss = model(tokens[:, :-1], labels, targets=tokens)
    assert logits.shape == (3, TINY_GPT["block_size"], TINY_GPT["vocab_size"]) and logits.dtype == torch.float32
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, TINY_GPT["vocab_size"]), tokens.reshape(-1))
    torch.testing.assert_close(loss, ref)
    # Class slot only.
    logits, loss = model(None, labels)
    assert logits.shape == (3, 1, TINY_GPT["vocab_size"]) and loss is None
    # Causality: changing a later token leaves earlier logits unchanged.
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % TINY_GPT["vocab_size"]
    a, _ = model(tokens[:, :-1], labels)
    b, _ = model(changed[:, :-1], labels)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])
    # Early exit for the linear probe.
    feat = model(tokens[:, :-1], labels, ret_inner_feat_layer=1)
    assert feat.shape == (3, TINY_GPT["block_size"], 64)


def test_bf16_forward_runs_and_returns_float32():
    model = tiny_gpt().to(torch.bfloat16)
    logits, _ = model(torch.randint(0, 64, (2, 5)), torch.tensor([1, 2]))
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("batch", [1, 4])
def test_kv_cache_decoding_equals_full_forward(batch):
    model = tiny_gpt()
    n = TINY_GPT["block_size"]
    tokens = torch.randint(0, TINY_GPT["vocab_size"], (batch, n))
    labels = torch.randint(0, TINY_GPT["num_classes"] + 1, (batch,))  # includes the null class
    with torch.no_grad():
        full, _ = model(tokens[:, :-1], labels)
        model.setup_caches(batch, n + 1)
        assert model.max_seq_length == 24  # 17 rounded up to a multiple of 8
        steps = [model(None, labels, input_pos=torch.tensor([0]))[0]]
        for p in range(1, n):
            steps.append(model(tokens[:, p - 1: p], labels, input_pos=torch.tensor([p]))[0])
        cached = torch.cat(steps, dim=1)
        torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
        # A multi-token chunk through the cache gives the same logits as well.
        model.setup_caches(batch, n + 1)
        model(None, labels, input_pos=torch.tensor([0]))
        chunk, _ = model(tokens[:, : n - 1], labels, input_pos=torch.arange(1, n))
        torch.testing.assert_close(chunk, full[:, 1:], rtol=1e-5, atol=1e-5)
        # Unlike the original, the teacher-forced path still works while a cache exists,
        # and the cache never shows up in the state dict.
        again, _ = model(tokens[:, :-1], labels)
        torch.testing.assert_close(again, full)
        assert not any("kv_cache" in k for k in model.state_dict())
        model.clear_caches()
        with pytest.raises(RuntimeError, match="setup_caches"):
            model(tokens[:, :1], labels, input_pos=torch.tensor([1]))


def test_bad_class_ids_rejected_in_forward():
    model = tiny_gpt()
    with pytest.raises(ValueError, match=r"\[-1, 11\]"):
        model(None, torch.tensor([3, -1, 11]))
    model(None, torch.tensor([TINY_GPT["num_classes"]]))  # the null class is a valid model input


def test_training_mode_label_dropout_uses_null_row():
    model = GPT_models["GPT-tiny"](class_dropout_prob=1.0 - 1e-9, **{k: v for k, v in TINY_GPT.items()}).train()
    emb = model.cls_embedding(torch.tensor([1, 2, 3]))
    null = model.cls_embedding.embedding_table.weight[TINY_GPT["num_classes"]]
    torch.testing.assert_close(emb[:, 0], null.expand(3, -1))
