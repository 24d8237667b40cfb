"""GPT-B on seeded weights reproduces the original's logits and greedy CFG sequences (tests/data/parity), for the
released 1D GPT (gpt_1d.py) and the 2D-RoPE GPT (GPT_models[...](gpt_2d=True), the original's gpt.py)."""
from __future__ import annotations

import pytest
import torch

from autoregressive import generate

from parity_checks import GPT_FILES, rel_err, seeded_gpt_b


@pytest.fixture(scope="module", params=sorted(GPT_FILES))
def gpt_b(request):
    return seeded_gpt_b(request.param)


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
