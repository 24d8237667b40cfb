"""Sampling: CFG combination and schedules, top-k / top-p, seeded and batch-split-independent sampling."""
from __future__ import annotations

import math

import pytest
import torch

import autoregressive.models.generate as gen_mod
from autoregressive import generate
from autoregressive.models.generate import CFG_SCHEDULES, cfg_scale_at, sample, sample_generators, top_k_top_p_filtering

from testlib import TINY_GPT, tiny_gpt

pytestmark = pytest.mark.usefixtures("single_thread")
OFF = 1.0001


# ------------------------------------------------------------------ schedules
def test_schedule_values():
    s = 3.0
    assert cfg_scale_at("constant", s, 0.3) == s
    assert cfg_scale_at("linear", s, 0.25) == pytest.approx(1 + 2 * 0.25 + 1e-4)
    assert cfg_scale_at("linear_re", s, 0.25) == pytest.approx(1 + 2 * 0.75 + 1e-4)
    assert cfg_scale_at("triangular", s, 0.25) == pytest.approx(1 + 2 * 0.5 + 1e-4)
    assert cfg_scale_at("triangular", s, 0.5) == pytest.approx(s + 1e-4)
    assert cfg_scale_at("triangular", s, 0.75) == pytest.approx(1 + 2 * 0.5 + 1e-4)
    assert cfg_scale_at("triangular", s, 0.2, peak=0.8) == pytest.approx(1 + 2 * 0.25 + 1e-4)
    assert cfg_scale_at("rectangular", s, 0.04) == OFF
    assert cfg_scale_at("rectangular", s, 0.05) == s
    assert cfg_scale_at("rectangular", s, 0.6, window_start=0.2, window_end=0.5) == OFF
    assert cfg_scale_at("step", s, 0.17, window_start=0.18) == OFF
    assert cfg_scale_at("step", s, 0.18, window_start=0.18) == s
    assert cfg_scale_at("step", 1.0, 0.9, window_start=0.18) == 1.0
    assert cfg_scale_at("step", s, 0.5, window_start=0.18, window_end=1.0) == s  # window_end ignored
    assert cfg_scale_at("cosine", s, 0.5) == pytest.approx(1 + 2 * 0.5)
    assert cfg_scale_at("cosine", s, 1.0) == pytest.approx(1.0)
    assert cfg_scale_at("sigmoid", s, 0.5) == pytest.approx(2.0)
    assert cfg_scale_at("sigmoid", s, 1.0) == pytest.approx(1 + 2 / (1 + math.exp(-5)))
    assert set(CFG_SCHEDULES) == {"constant", "linear", "linear_re", "triangular", "rectangular", "step",
                                  "cosine", "sigmoid"}


def test_schedule_errors():
    with pytest.raises(ValueError, match="unknown cfg_schedule"):
        cfg_scale_at("cos", 2.0, 0.5)
    with pytest.raises(ValueError, match="window_start"):
        cfg_scale_at("step", 2.0, 0.5)
    with pytest.raises(ValueError, match="does not take"):
        cfg_scale_at("linear", 2.0, 0.5, window_start=0.1)


def test_published_step_schedule_per_token():
    """Step 0.18 over 256 tokens: token 0 full s (prefill), tokens 1..45 at 1.0001, tokens 46..255 at s."""
    steps = 255
    scales = [cfg_scale_at("step", 1.75, (i + 1) / steps, window_start=0.18) for i in range(steps)]
    assert all(x == OFF for x in scales[:45]) and all(x == 1.75 for x in scales[45:])


# ---------------------------------------------------------- generate plumbing
class RecordingSample:
    """Stands in for generate's `sample` and records the guided logits of every step."""

    def __init__(self):
        self.logits = []

    def __call__(self, logits, temperature, top_k, top_p, sample_logits, uniforms):
        self.logits.append(logits.clone())
        return torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)


def scales_used(model, cond, n, monkeypatch, **kwargs):
    """Run generate with the real model, recompute cond/uncond logits and solve for the scale used per token."""
    rec = RecordingSample()
    monkeypatch.setattr(gen_mod, "sample", rec)
    out = generate(model, cond, n, **kwargs)
    assert torch.equal(out, torch.zeros_like(out))
    # Token stream is all zeros, so the reference logits come from a teacher-forced pass.
    b = cond.shape[0]
    with torch.no_grad():
        lc, _ = model(torch.zeros(b, n - 1, dtype=torch.long), cond)
        lu, _ = model(torch.zeros(b, n - 1, dtype=torch.long), torch.full_like(cond, TINY_GPT["num_classes"]))
    scales = []
    for t, g in enumerate(rec.logits):
        d = lc[:, t] - lu[:, t]
        scales.append(((g - lu[:, t]) * d).sum().item() / (d * d).sum().item())
    return scales, rec, lc


def test_cfg_combination_and_step_schedule(monkeypatch):
    model, cond, n = tiny_gpt(), torch.tensor([1, 7]), TINY_GPT["block_size"]
    scales, rec, lc = scales_used(model, cond, n, monkeypatch, cfg_scale=4.0, cfg_schedule="step",
                                  cfg_schedule_kwargs={"window_start": 0.5})
    expected = [4.0] + [OFF if (i + 1) / (n - 1) < 0.5 else 4.0 for i in range(n - 1)]
    assert scales == pytest.approx(expected, abs=1e-4)
    assert all(g.shape == (2, TINY_GPT["vocab_size"]) for g in rec.logits)


@pytest.mark.parametrize("schedule,kwargs", [("linear", {}), ("linear_re", {}), ("triangular", {}),
                                             ("rectangular", {"window_start": 0.2, "window_end": 0.7}),
                                             ("cosine", {}), ("sigmoid", {})])
def test_each_schedule_inside_generate(monkeypatch, schedule, kwargs):
    model, cond, n = tiny_gpt(), torch.tensor([3]), TINY_GPT["block_size"]
    scales, rec, lc = scales_used(model, cond, n, monkeypatch, cfg_scale=2.5, cfg_schedule=schedule,
                                  cfg_schedule_kwargs=kwargs)
    expected = [2.5] + [cfg_scale_at(schedule, 2.5, (i + 1) / (n - 1), **kwargs) for i in range(n - 1)]
    for t, (got, want) in enumerate(zip(scales, expected, strict=True)):
        if want <= 1.0:  # conditional logits alone
            torch.testing.assert_close(rec.logits[t], lc[:, t], rtol=1e-5, atol=1e-5)
        else:
            assert got == pytest.approx(want, abs=1e-4), t


def test_no_cfg_runs_unguided_batch(monkeypatch):
    model, cond, n = tiny_gpt(), torch.tensor([2, 4, 6]), 6
    rec = RecordingSample()
    monkeypatch.setattr(gen_mod, "sample", rec)
    generate(model, cond, n, cfg_scale=1.0)
    with torch.no_grad():
        lc, _ = model(torch.zeros(3, n - 1, dtype=torch.long), cond)
    for t, g in enumerate(rec.logits):
        torch.testing.assert_close(g, lc[:, t], rtol=1e-5, atol=1e-5)


def test_cfg_interval(monkeypatch):
    model, cond, n = tiny_gpt(), torch.tensor([5]), 10
    scales, rec, lc = scales_used(model, cond, n, monkeypatch, cfg_scale=3.0, cfg_interval=3)
    assert scales[:5] == pytest.approx([3.0] * 5, abs=1e-4)  # prefill + decode i = 0..3
    for t in range(5, n):
        torch.testing.assert_close(rec.logits[t], lc[:, t], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ filtering
def test_top_k_keeps_ties_and_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 3.0, -2.0]])
    out = top_k_top_p_filtering(logits, top_k=2)
    assert torch.isinf(out[0, [0, 4]]).all() and torch.equal(out[0, 1:4], logits[0, 1:4])  # 3.0 tie kept
    out = top_k_top_p_filtering(logits, top_k=1)
    assert torch.isfinite(out).sum() == 1 and out[0, 1] == 5.0
    assert torch.equal(top_k_top_p_filtering(logits, top_k=100), logits)  # k clamped to V


def test_top_p_keeps_first_crossing_token():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    keep = torch.isfinite(top_k_top_p_filtering(logits, top_p=0.7))
    assert keep.tolist() == [[True, True, False, False]]  # cumsum 0.5, 0.8 > 0.7 is kept, the rest dropped
    keep = torch.isfinite(top_k_top_p_filtering(logits, top_p=0.1))
    assert keep.tolist() == [[True, False, False, False]]  # the top token always stays
    shuffled = logits[:, [2, 0, 3, 1]]
    keep = torch.isfinite(top_k_top_p_filtering(shuffled, top_p=0.7))
    assert keep.tolist() == [[False, True, False, True]]
    both = torch.isfinite(top_k_top_p_filtering(logits, top_k=3, top_p=0.9))
    assert both.tolist() == [[True, True, True, False]]


def test_sample_respects_filter_and_distribution():
    logits = torch.tensor([[0.0, math.log(3.0), -math.inf, 0.0]]).repeat(4000, 1)
    u = torch.rand(4000, generator=torch.Generator().manual_seed(0))
    tokens = sample(logits, uniforms=u)
    counts = torch.bincount(tokens, minlength=4).float() / 4000
    assert counts[2] == 0
    assert counts.tolist() == pytest.approx([0.2, 0.6, 0.0, 0.2], abs=0.03)
    top1 = sample(logits[:3], top_k=1, uniforms=torch.tensor([0.0, 0.5, 0.9999999]))
    assert top1.tolist() == [1, 1, 1]
    assert sample(logits[:2], sample_logits=False).tolist() == [1, 1]
    # Temperature near zero is greedy.
    assert sample(logits[:2], temperature=0.0, uniforms=torch.tensor([0.01, 0.99])).tolist() == [1, 1]
    # Extreme uniforms never select zero-probability tokens.
    edge = torch.tensor([[-math.inf, 0.0, -math.inf, -math.inf]]).repeat(2, 1)
    assert sample(edge, uniforms=torch.tensor([0.0, 1.0 - 2 ** -24])).tolist() == [1, 1]


# ----------------------------------------------------------- seeded sampling
def test_seeded_sampling_reproducible_and_batch_split_independent():
    model, n = tiny_gpt(), TINY_GPT["block_size"]
    cond = torch.tensor([0, 3, 3, 9, 1])
    full = generate(model, cond, n, cfg_scale=2.0, generator=sample_generators(7, range(5)))
    again = generate(model, cond, n, cfg_scale=2.0, generator=sample_generators(7, range(5)))
    assert torch.equal(full, again) and full.dtype == torch.long and full.shape == (5, n)
    parts = [generate(model, cond[a:b], n, cfg_scale=2.0, generator=sample_generators(7, range(a, b)))
             for a, b in [(0, 2), (2, 3), (3, 5)]]
    assert torch.equal(torch.cat(parts), full)
    reordered = generate(model, cond[[4, 0]], n, cfg_scale=2.0, generator=sample_generators(7, [4, 0]))
    assert torch.equal(reordered, full[[4, 0]])
    other_seed = generate(model, cond, n, cfg_scale=2.0, generator=sample_generators(8, range(5)))
    assert not torch.equal(other_seed, full)
    # Integer seeds per row work too, and rows with the same class but different seeds differ.
    ints = generate(model, cond, n, generator=[11, 12, 13, 14, 15])
    assert not torch.equal(ints[1], ints[2])


def test_global_rng_and_single_generator_reproducible():
    model, cond = tiny_gpt(), torch.tensor([1, 2])
    torch.manual_seed(3)
    a = generate(model, cond, 8)
    torch.manual_seed(3)
    b = generate(model, cond, 8)
    assert torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(generate(model, cond, 8, generator=g1), generate(model, cond, 8, generator=g2))


def test_greedy_top_k_1_equals_sample_logits_false():
    model, cond = tiny_gpt(), torch.tensor([4, 8])
    a = generate(model, cond, TINY_GPT["block_size"], cfg_scale=3.0, sample_logits=False)
    b = generate(model, cond, TINY_GPT["block_size"], cfg_scale=3.0, top_k=1, generator=[0, 1])
    assert torch.equal(a, b)
    # Greedy decoding through the cache equals greedy decoding by repeated full forwards.
    tokens = torch.empty(2, 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(TINY_GPT["block_size"]):
            lc, _ = model(tokens, cond)
            lu, _ = model(tokens, torch.full_like(cond, TINY_GPT["num_classes"]))
            g = lu[:, -1] + 3.0 * (lc[:, -1] - lu[:, -1])
            tokens = torch.cat([tokens, g.softmax(-1).argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(a, tokens)


# --------------------------------------------------------------- input checks
def test_bad_class_ids_and_arguments_rejected():
    model = tiny_gpt()
    with pytest.raises(ValueError, match=r"class ids \[10, 12\]"):
        generate(model, torch.tensor([1, 10, 12]), 4)
    with pytest.raises(ValueError, match=r"\[-3\]"):
        generate(model, torch.tensor([-3]), 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, torch.tensor([1]), TINY_GPT["block_size"] + 1)
    with pytest.raises(ValueError, match="1-D integer"):
        generate(model, torch.tensor([1.0]), 4)
    with pytest.raises(ValueError, match="one per row"):
        generate(model, torch.tensor([1, 2]), 4, generator=[1])
    with pytest.raises(ValueError, match="window_start"):
        generate(model, torch.tensor([1]), 4, cfg_scale=2.0, cfg_schedule="step")
    with pytest.raises(ValueError, match="top_p"):
        generate(model, torch.tensor([1]), 4, top_p=0.0)


def test_model_state_unchanged_after_generate():
    model = tiny_gpt()
    keys = list(model.state_dict())
    generate(model, torch.tensor([1]), 5, cfg_scale=2.0)
    assert list(model.state_dict()) == keys
    model.load_state_dict(tiny_gpt(seed=1).state_dict(), strict=True)
    assert all(layer.attention.kv_cache is None for layer in model.layers)


def test_output_is_an_ordinary_tensor_that_decode_code_accepts():
    """Sampling runs in inference mode, but its codes are a normal tensor: a tokenizer with gradients on (training
    mode, autograd enabled) decodes them, which an inference tensor would refuse."""
    from tokenizer import build_tokenizer

    from testlib import CONFIGS

    tok = build_tokenizer(CONFIGS / "VQ_tiny32_2d.yaml")
    gpt = tiny_gpt(seed=0, vocab_size=tok.codebook_size, block_size=tok.num_tokens)
    codes = generate(gpt, torch.tensor([1, 2]), tok.num_tokens, cfg_scale=2.0, generator=[0, 1])
    assert not codes.is_inference() and codes.dtype == torch.long and codes.shape == (2, tok.num_tokens)
    assert all(p.grad is None for p in gpt.parameters())
    images = tok.decode_code(codes, tok.latent_shape(2))
    assert images.shape == (2, 3, tok.image_size, tok.image_size) and images.requires_grad


def test_sampling_config_is_the_keyword_form():
    """generate(model, cond, n, SamplingConfig(...)) == the keyword call; a config is checked when built."""
    from autoregressive.models.generate import SamplingConfig
    model, cond = tiny_gpt(), torch.tensor([1, 2])
    config = SamplingConfig(cfg_scale=2.0, cfg_schedule="step", cfg_schedule_kwargs={"window_start": 0.2}, top_k=5)
    kw = generate(model, cond, 8, cfg_scale=2.0, cfg_schedule="step", cfg_schedule_kwargs={"window_start": 0.2},
                  top_k=5, generator=[1, 2])
    assert torch.equal(generate(model, cond, 8, config, generator=[1, 2]), kw)
    assert torch.equal(generate(model, cond, 8, config.replace(top_k=0), top_k=5, generator=[1, 2]), kw)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="window_start"):
        SamplingConfig(cfg_schedule="step")
    with pytest.raises(TypeError, match="unknown sampling"):
        generate(model, cond, 8, cfg_scael=2.0)
