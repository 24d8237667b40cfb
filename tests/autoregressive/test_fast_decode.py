"""The decode speed layer (autoregressive/models/fast_decode.py): a built model is plain PyTorch, the swap keeps the
parameters, state-dict keys and outputs, and the sampling entry points install it for their duration only."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from autoregressive import generate
from autoregressive.models import fast_decode
from autoregressive.models.fast_decode import FastAttention, FastLinear, accelerate, accelerated, restore
from autoregressive.models.gpt import Attention
from autoregressive.models.static_decode import StaticDecoder

from testlib import tiny_gpt

pytestmark = pytest.mark.usefixtures("single_thread")


def layer_types(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules() if isinstance(m, (nn.Linear, Attention))}


def count_f_linear(monkeypatch) -> list:
    calls = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a: calls.append(1) or linear(*a))
    return calls


def test_a_built_model_is_plain_pytorch():
    assert layer_types(tiny_gpt()) == {nn.Linear, Attention}


def test_the_swap_keeps_parameters_keys_and_outputs():
    model = tiny_gpt(seed=1)
    before = model.state_dict()
    idx, labels = torch.randint(0, 16, (2, 9)), torch.tensor([1, 4])
    with torch.no_grad():
        plain, _ = model(idx, labels)  # 2 x 10 rows per product: the fast layers run F.linear too
        one, _ = model(idx[:1, :3], labels[:1])  # 4 rows: the weight @ x.T path once fast
    changed = accelerate(model)
    assert layer_types(model) == {FastLinear, FastAttention}
    assert len(changed) == sum(1 for m in model.modules() if isinstance(m, (nn.Linear, Attention)))
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(after[k].data_ptr() == before[k].data_ptr() for k in before)  # the same tensors, not copies
    with torch.no_grad():
        assert torch.equal(model(idx, labels)[0], plain)
        torch.testing.assert_close(model(idx[:1, :3], labels[:1])[0], one)
    assert accelerate(model) == []  # already fast: nothing to change
    fast_decode.prepack(model, 4, "onednn")
    model.layers[0].attention.valid_len = 3
    restore(changed)
    assert layer_types(model) == {nn.Linear, Attention}
    assert not any({"_packed", "valid_len", "native_attention"} & set(vars(m)) for m in model.modules())
    model.load_state_dict(after, strict=True)


def test_accelerated_gives_back_only_what_it_changed():
    model = tiny_gpt()
    outer = accelerate(model)
    with accelerated(model):
        assert layer_types(model) == {FastLinear, FastAttention}
    assert layer_types(model) == {FastLinear, FastAttention}  # the outer owner still holds it fast
    restore(outer)
    with accelerated(model):
        assert layer_types(model) == {FastLinear, FastAttention}
    assert layer_types(model) == {nn.Linear, Attention}


def test_entry_points_take_the_fast_path_by_default_and_leave_the_model_plain(monkeypatch):
    """One image without guidance multiplies one row per product: generate() runs every product as weight @ x.T
    (no F.linear), unless small_batch_cpu_matmul(False); the static decoder the same until close()."""
    model = tiny_gpt(seed=2)
    cond = torch.tensor([3])
    calls = count_f_linear(monkeypatch)
    fast = generate(model, cond, 8, sample_logits=False)
    assert calls == [] and layer_types(model) == {nn.Linear, Attention}
    with fast_decode.small_batch_cpu_matmul(False):
        plain = generate(model, cond, 8, sample_logits=False)
    assert calls and torch.equal(fast, plain)  # this seeded model's greedy tokens do not depend on the rounding
    calls.clear()
    with StaticDecoder(model, batch_size=1, compile="none") as decoder:
        assert torch.equal(decoder.generate(cond, 8, sample_logits=False), fast)
        assert calls == [] and layer_types(model) == {FastLinear, FastAttention}
    assert layer_types(model) == {nn.Linear, Attention}


def test_small_batch_cpu_matmul_is_a_scoped_switch(monkeypatch):
    """The weight @ x.T path for 2..8 rows on CPU is on by default and off inside small_batch_cpu_matmul(False)."""
    calls = count_f_linear(monkeypatch)
    layer = nn.Linear(16, 8, bias=False)
    accelerate(layer)
    x = torch.randn(4, 16)
    fast = layer(x)
    assert calls == []
    with fast_decode.small_batch_cpu_matmul(False):
        plain = layer(x)
    assert calls == [1]
    torch.testing.assert_close(fast, plain)
    layer(x)
    assert calls == [1]  # the switch is scoped to the block


def test_a_decoder_takes_its_fast_layers_back_after_another_closes():
    """Two decoders on one model: the first one's close() gives the layers their plain classes back (and drops the
    packed copies); the second one's next batch installs and packs them again, with the same tokens."""
    model = tiny_gpt(seed=3)
    cond = torch.tensor([1, 2])
    first = StaticDecoder(model, 2, compile="none", cpu_prepack="onednn")
    second = StaticDecoder(model, 2, compile="none", cpu_prepack="onednn")
    first.generate(cond, 8, cfg_scale=2.0, sample_logits=False)
    ref = second.generate(cond, 8, cfg_scale=2.0, sample_logits=False)
    first.close()
    assert layer_types(model) == {nn.Linear, Attention}
    assert torch.equal(second.generate(cond, 8, cfg_scale=2.0, sample_logits=False), ref)
    assert layer_types(model) == {FastLinear, FastAttention}
    assert all(m._packed is not None for m in model.modules() if isinstance(m, FastLinear))
    second.close()
    assert layer_types(model) == {nn.Linear, Attention}
