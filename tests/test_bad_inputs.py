"""Bad values give a clear error naming what is wrong, never wrong numbers: typed config keys, sampling arguments,
non-finite checkpoints, evaluator inputs, 16-bit images."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from autoregressive import generate
from evaluations.c2i.evaluator import evaluate_npz
from evaluations.metrics import MetricInputError
from tokenizer import build_tokenizer, load_tokenizer
from utils.checkpoint import CheckpointError, save_atomic
from utils.config import ConfigError
from utils.data import to_rgb

from testlib import CONFIGS, tiny_gpt

TINY = CONFIGS / "VQ_tiny32.yaml"


@pytest.mark.parametrize("override,message", [
    ('model.init_args.rot="no"', "model.init_args.rot must be bool, got 'no'"),
    ("model.init_args.codebook_size=abc", "model.init_args.codebook_size must be int, got 'abc'"),
    ("model.init_args.entropy_loss_ratio=true", "model.init_args.entropy_loss_ratio must be float or int"),
    ('+trainer.ema="yes"', "trainer.ema must be bool"),
    ("trainer.lr=fast", "trainer.lr must be float or int, got 'fast'")])
def test_wrong_types_are_rejected_by_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_tokenizer(TINY, [override])


def test_loss_params_are_typed_too():
    from tokenizer import read_tokenizer_config
    from tokenizer.losses import build_loss

    with pytest.raises(ConfigError, match="loss.params.disc_start must be int, got 'soon'"):
        build_loss(read_tokenizer_config(TINY, ["loss.params.disc_start=soon"]), pretrained=False)


@pytest.mark.parametrize("kwargs,message", [
    ({"temperature": float("nan")}, "temperature must be > 0"), ({"temperature": -1.0}, "temperature must be > 0"),
    ({"cfg_scale": float("nan")}, "cfg_scale must be a finite number"), ({"top_p": 0.0}, r"top_p must lie in \(0, 1\]"),
    ({"top_k": -3}, "top_k must be >= 0")])
def test_sampling_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_gpt(), torch.tensor([1]), 4, **kwargs)


def test_temperature_zero_is_greedy():
    model = tiny_gpt()
    assert torch.equal(generate(model, torch.tensor([1, 2]), 8, temperature=0.0),
                       generate(model, torch.tensor([1, 2]), 8, top_k=1, sample_logits=False))


def test_non_finite_weights_are_found_at_load(tmp_path):
    sd = build_tokenizer(TINY).state_dict()
    sd["quant_conv.weight"][0, 0] = float("nan")
    save_atomic({"model": sd}, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"non-finite \(NaN/inf\) weights in 1 tensor\(s\): quant_conv.weight"):
        load_tokenizer(TINY, tmp_path / "nan.pt")


def _npz(path, arr):
    np.savez(path, arr_0=arr)
    return path


def test_evaluator_rejects_float_images_and_mixed_sizes_before_any_work(tmp_path):
    good = _npz(tmp_path / "good.npz", np.zeros((4, 16, 16, 3), np.uint8))
    floats = _npz(tmp_path / "float.npz", np.zeros((4, 16, 16, 3), np.float32))
    with pytest.raises(MetricInputError, match=r"float\.npz: arr_0 has dtype float32; .* uint8"):
        evaluate_npz(good, floats, device="cpu")
    small = _npz(tmp_path / "small.npz", np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(MetricInputError, match="reference images are 8x8 but the samples are 16x16"):
        evaluate_npz(small, good, device="cpu")


def test_writability_check_names_the_file(tmp_path, monkeypatch):
    good = _npz(tmp_path / "good.npz", np.zeros((4, 16, 16, 3), np.uint8))
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(MetricInputError, match=r"cannot write the results to .*x\.txt"):
        evaluate_npz(good, good, device="cpu", out_txt=tmp_path / "x.txt")


def test_16_bit_images_are_scaled_not_clipped():
    ramp = (np.linspace(0, 65535, 64).reshape(8, 8)).astype(np.uint16)
    img = Image.fromarray(ramp)
    assert img.mode == "I;16"
    rgb = np.asarray(to_rgb(img))
    assert rgb.dtype == np.uint8 and rgb[..., 0].min() == 0 and rgb[..., 0].max() == 255
    assert np.abs(rgb[..., 0].astype(int) - np.round(ramp / 257.0)).max() <= 1  # not all white
    assert (rgb[..., 0] < 255).mean() > 0.9
