"""The CPU speed paths (channels-last CNN levels, in-place no-grad ops, oneDNN ViT products) change float rounding only:
they agree with the plain NCHW / nn.Linear / nn.MultiheadAttention paths, and training (autograd) still works with
channels-last on, giving the same gradients."""
from __future__ import annotations

import pytest
import torch

import tokenizer.models.cnn as cnn
import tokenizer.models.vit as vit
from tokenizer import build_tokenizer

from testlib import CONFIGS

CONFIGS_TINY = [CONFIGS / "VQ_tiny32.yaml", CONFIGS / "VQ_tiny32_2d.yaml"]


def _set_channels_last(model: torch.nn.Module, flag: bool | None) -> None:
    model.encoder.channels_last = model.decoder.channels_last = flag


@pytest.fixture
def every_level_channels_last(monkeypatch):
    """The tiny models' levels are all below CL_MIN_PIXELS; make every level eligible."""
    monkeypatch.setattr(cnn, "CL_MIN_PIXELS", 1)


@pytest.mark.parametrize("config", CONFIGS_TINY)
def test_inference_fast_paths_match_the_plain_paths(config, every_level_channels_last, monkeypatch):
    model = build_tokenizer(config).eval()
    x = torch.rand(2, 3, model.image_size, model.image_size) * 2 - 1
    with torch.no_grad():
        _set_channels_last(model, None)  # CPU: channels-last, ViT through oneDNN
        codes_fast, images_fast = model.encode_to_codes(x), model(x)[0]
        _set_channels_last(model, False)
        monkeypatch.setattr(vit, "_cpu_fast_path", lambda t: False)
        codes_plain, images_plain = model.encode_to_codes(x), model(x)[0]
    assert images_fast.is_contiguous() and images_fast.shape == x.shape  # callers still get NCHW
    assert (codes_fast != codes_plain).float().mean() <= 0.02  # only near ties of the argmin may flip
    torch.testing.assert_close(images_fast, images_plain, rtol=1e-4, atol=1e-4)


def test_depth_to_space_is_layout_independent():
    x = torch.randn(2, 4 * 8, 5, 7)
    expected = cnn.depth_to_space_dcr(x)
    out = cnn.depth_to_space_dcr(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, expected)


def test_training_gradients_are_unchanged_by_channels_last(every_level_channels_last):
    torch.manual_seed(0)
    model = build_tokenizer(CONFIGS_TINY[0]).train()
    x = torch.rand(2, 3, model.image_size, model.image_size) * 2 - 1
    grads = []
    for flag in (False, True):
        _set_channels_last(model, flag)
        model.zero_grad()
        torch.manual_seed(1)
        (dec, dir_dec), (diff, fea) = model(x)
        loss = dec.pow(2).mean() + dir_dec.pow(2).mean() + diff[0] + diff[1] + fea
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    assert model.encoder.conv_in.weight.grad is not None and model.decoder.conv_out.weight.grad is not None
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-3, atol=1e-5, msg=name)
