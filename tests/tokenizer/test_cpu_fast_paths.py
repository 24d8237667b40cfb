"""The CPU speed layer (tokenizer/models/accelerate.py: channels-last CNN levels, Winograd convolutions, in-place
ops, oneDNN ViT products) changes float rounding only: an accelerated model agrees with the plain one built from the
same weights (same state-dict keys), and training (autograd) still works with channels-last on, giving the same
gradients."""
from __future__ import annotations

import copy

import pytest
import torch

import tokenizer.models.accelerate as fast
import tokenizer.models.cnn as cnn
from tokenizer import build_tokenizer, load_tokenizer
from utils import cpu_kernels

from testlib import CONFIGS

CONFIGS_TINY = [CONFIGS / "VQ_tiny32.yaml", CONFIGS / "VQ_tiny32_2d.yaml"]


def _set_channels_last(model: torch.nn.Module, flag: bool | None) -> None:
    model.encoder.channels_last = model.decoder.channels_last = flag


@pytest.fixture
def every_level_channels_last(monkeypatch):
    """The tiny models' levels are all below CL_MIN_PIXELS; make every level eligible."""
    monkeypatch.setattr(fast, "CL_MIN_PIXELS", 1)


def _plain_and_fast(config) -> tuple[torch.nn.Module, torch.nn.Module]:
    plain = build_tokenizer(config, fast=False)
    return plain, fast.accelerate(copy.deepcopy(plain))


@pytest.mark.parametrize("config", CONFIGS_TINY)
def test_accelerated_model_matches_the_plain_model(config, every_level_channels_last):
    plain, accelerated = (m.eval() for m in _plain_and_fast(config))
    x = torch.rand(2, 3, plain.image_size, plain.image_size) * 2 - 1
    with torch.no_grad():
        codes_fast, images_fast = accelerated.encode_to_codes(x), accelerated(x)[0]
        codes_plain, images_plain = plain.encode_to_codes(x), plain(x)[0]
    assert images_fast.is_contiguous() and images_fast.shape == x.shape  # callers still get NCHW
    assert (codes_fast != codes_plain).float().mean() <= 0.02  # only near ties of the argmin may flip
    torch.testing.assert_close(images_fast, images_plain, rtol=1e-4, atol=1e-4)


def test_accelerate_swaps_classes_only():
    """Same parameter objects and state-dict keys; plain modules stay NCHW and exactly their own forward; twice is
    once; a GPU target is left plain. With channels-last off and the ViT on the autograd path (no fast path applies)
    the accelerated forward is the plain one bit for bit (the in-place ops round alike)."""
    plain = build_tokenizer(CONFIGS_TINY[0], fast=False).eval()
    assert type(plain.encoder) is cnn.Encoder and type(plain.encoder.conv_blocks[0].res[0].conv1) is torch.nn.Conv2d
    params = dict(plain.named_parameters())
    keys = list(plain.state_dict())
    model = fast.accelerate(plain)
    assert model is plain and list(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())
    assert isinstance(model.encoder, fast.FastEncoder) and isinstance(model.decoder, fast.FastDecoder)
    block = model.decoder.conv_blocks[0].res[0]
    assert isinstance(block, fast.FastResnetBlock) and isinstance(block.conv1, fast.WinogradConv3x3)
    layer = model.vit_encoder.transformer[0]
    assert isinstance(layer.self_attn, fast.FastMultiheadAttention) and isinstance(layer.linear1, fast.OneDNNLinear)
    assert type(model.vit_encoder.encoder_embed) is torch.nn.Linear  # only the transformer layers' products
    classes = [type(m) for m in model.modules()]
    assert [type(m) for m in fast.accelerate(model).modules()] == classes

    gpu_target = fast.accelerate(build_tokenizer(CONFIGS_TINY[0], fast=False), "cuda")
    assert not any(type(m).__module__ == fast.__name__ for m in gpu_target.modules())

    reference = build_tokenizer(CONFIGS_TINY[0], fast=False).eval()
    reference.load_state_dict(model.state_dict())
    _set_channels_last(model, False)
    x = torch.rand(2, 3, model.image_size, model.image_size, requires_grad=True) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.encoder(x), reference.encoder(x))
    assert torch.equal(model(x)[0], reference(x)[0])


def test_load_tokenizer_accelerates_by_default(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(build_tokenizer(CONFIGS_TINY[0], fast=False).state_dict(), path)
    assert isinstance(load_tokenizer(CONFIGS_TINY[0], path).encoder, fast.FastEncoder)
    assert type(load_tokenizer(CONFIGS_TINY[0], path, fast=False).encoder) is cnn.Encoder
    assert isinstance(build_tokenizer(CONFIGS_TINY[0]).decoder, fast.FastDecoder)


def test_depth_to_space_is_layout_independent():
    x = torch.randn(2, 4 * 8, 5, 7)
    expected = cnn.depth_to_space_dcr(x)
    out = fast.depth_to_space_channels_last(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, expected)
    assert torch.equal(fast.depth_to_space_channels_last(x), expected)


def test_training_gradients_are_unchanged_by_channels_last(every_level_channels_last):
    torch.manual_seed(0)
    plain, accelerated = (m.train() for m in _plain_and_fast(CONFIGS_TINY[0]))
    _set_channels_last(accelerated, True)
    x = torch.rand(2, 3, plain.image_size, plain.image_size) * 2 - 1
    grads = []
    for model in (plain, accelerated):
        model.zero_grad()
        torch.manual_seed(1)
        (dec, dir_dec), (diff, fea) = model(x)
        loss = dec.pow(2).mean() + dir_dec.pow(2).mean() + diff[0] + diff[1] + fea
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    assert all(m.encoder.conv_in.weight.grad is not None and m.decoder.conv_out.weight.grad is not None
               for m in (plain, accelerated))
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-3, atol=1e-5, msg=name)


needs_kernel = pytest.mark.skipif(not cpu_kernels.available(),
                                  reason=f"native kernel unavailable here: {cpu_kernels.unavailable_reason()}")


def _counting(monkeypatch) -> dict:
    calls = {"n": 0}
    original = cpu_kernels.winograd_conv3x3

    def counted(*args):
        calls["n"] += 1
        return original(*args)
    monkeypatch.setattr(cpu_kernels, "winograd_conv3x3", counted)
    return calls


@needs_kernel
@pytest.mark.parametrize("c_in,c_out", [(64, 16), (128, 48), (256, 256)])
def test_winograd_conv3x3_matches_conv2d_on_channels_last_levels(c_in, c_out, monkeypatch):
    calls = _counting(monkeypatch)
    conv = fast.WinogradConv3x3(c_in, c_out).eval()
    x = torch.randn(1, c_in, 64, 70).contiguous(memory_format=torch.channels_last)  # 35 tiles a row: a partial block
    with torch.no_grad():
        y = conv(x)
        ref = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    assert calls["n"] == 1 and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert list(conv.state_dict()) == ["weight", "bias"]  # the transformed copy is not part of the checkpoint


@needs_kernel
def test_winograd_conv3x3_is_left_out_where_it_does_not_apply(monkeypatch):
    """NCHW or small levels, autograd, other channel counts, winograd=False: nn.Conv2d's own path, bit for bit."""
    calls = _counting(monkeypatch)
    conv = fast.WinogradConv3x3(64, 32)
    cl = torch.randn(1, 64, 64, 64).contiguous(memory_format=torch.channels_last)
    plain = lambda t: torch.nn.functional.conv2d(t, conv.weight, conv.bias, padding=1)  # noqa: E731
    with torch.no_grad():
        for x in (cl.contiguous(), torch.randn(1, 64, 32, 32).contiguous(memory_format=torch.channels_last),
                  torch.randn(1, 64, 63, 64).contiguous(memory_format=torch.channels_last)):
            assert torch.equal(conv(x), plain(x))
        conv.winograd = False
        assert torch.equal(conv(cl), plain(cl))
        conv.winograd = None
        narrow = fast.WinogradConv3x3(32, 32)  # 32 input channels: not compiled for
        x32 = cl[:, :32].contiguous(memory_format=torch.channels_last)
        assert torch.equal(narrow(x32), torch.nn.functional.conv2d(x32, narrow.weight, narrow.bias, padding=1))
    out = conv(cl)  # autograd records: the plain path, so gradients flow as before
    assert out.requires_grad and torch.equal(out, plain(cl))
    assert calls["n"] == 0


@needs_kernel
def test_winograd_weight_is_transformed_again_after_the_weight_changes(monkeypatch):
    conv = fast.WinogradConv3x3(64, 16).eval()
    x = torch.randn(1, 64, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        before = conv(x)
        conv.weight.mul_(2.0)
        conv.bias.zero_()
        after = conv(x)
        ref = torch.nn.functional.conv2d(x, conv.weight, None, padding=1)
    torch.testing.assert_close(after, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)


@needs_kernel
@pytest.mark.parametrize("replace", ["data", "assign"])
def test_winograd_weight_follows_a_replaced_weight_tensor(replace):
    """`.data = ...` keeps the parameter's version counter and load_state_dict(assign=True) swaps the parameter:
    neither may leave the old transformed weight in use."""
    conv = fast.WinogradConv3x3(64, 16).eval()
    x = torch.randn(1, 64, 64, 64).contiguous(memory_format=torch.channels_last)
    new_weight = torch.randn_like(conv.weight) * conv.weight.std()  # the scale of the initialised weight
    with torch.no_grad():
        conv(x)
        if replace == "data":
            conv.weight.data = new_weight
        else:
            conv.load_state_dict({"weight": new_weight, "bias": conv.bias.detach().clone()}, assign=True)
        y = conv(x)
        ref = torch.nn.functional.conv2d(x, new_weight, conv.bias, padding=1)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
