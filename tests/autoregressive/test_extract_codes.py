"""Code extraction: stored codes decode to the same images as direct reconstruction; resume; the check script."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autoregressive.check_codes import main as check_codes
from autoregressive.extract_codes import code_dirs, view_transform
from autoregressive.extract_codes import main as extract
from tokenizer import build_tokenizer
from utils.checkpoint import save_atomic
from utils.data import CodeDataset, ImageFolderDataset

from testlib import CONFIGS, PHOTOS

TINY = CONFIGS / "VQ_tiny32.yaml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(5)
    model = build_tokenizer(TINY).eval()
    path = tmp_path_factory.mktemp("tok") / "tiny.pt"
    save_atomic({"model": model.state_dict()}, path)
    return model, path


def _args(tmp, ckpt, *extra):
    return ["--data-path", str(PHOTOS), "--code-path", str(tmp / "codes"), "--image-size", "32",
            "--model-config", str(TINY), "--vq-ckpt", str(ckpt), "--device", "cpu", "--num-workers", "0",
            "--batch-size", "2", *extra]


def test_ten_crop_round_trip(tmp_path, tiny):
    model, ckpt = tiny
    summary = extract(_args(tmp_path, ckpt, "--ten-crop"))
    codes_dir, labels_dir = code_dirs(tmp_path / "codes", "imagenet", 32)
    ds = ImageFolderDataset(PHOTOS, 32)
    assert summary["views"] == 10 and len(list(codes_dir.glob("*.npy"))) == len(ds)
    codes = np.load(codes_dir / "0.npy")
    assert codes.shape == (10, 64) and codes.dtype == np.int64 and np.load(labels_dir / "0.npy").shape == ()
    # decoding the stored codes gives exactly what direct reconstruction of the same views gives
    views = view_transform(32, True, 1.1)(ds.load_rgb(0))
    with torch.no_grad():
        quant, _, info = model.encode(views)
        direct = model.decode_code(info[2], quant.shape)
        stored = model.decode_code(torch.from_numpy(codes), model.latent_shape(10))
    assert torch.equal(info[2].reshape(10, -1), torch.from_numpy(codes))
    assert torch.allclose(direct, stored, atol=1e-5)
    assert json.loads((tmp_path / "codes" / "extract_settings.json").read_text())["tokens"] == 64


def test_resume_only_fills_missing(tmp_path, tiny):
    _, ckpt = tiny
    extract(_args(tmp_path, ckpt, "--max-images", "3"))
    codes_dir, labels_dir = code_dirs(tmp_path / "codes", "imagenet", 32)
    first = {p.name: p.stat().st_mtime_ns for p in codes_dir.glob("*.npy")}
    assert sorted(first) == ["0.npy", "1.npy", "2.npy"]
    (labels_dir / "1.npy").unlink()  # as if killed between the two writes
    extract(_args(tmp_path, ckpt, "--resume"))
    after = {p.name: p.stat().st_mtime_ns for p in codes_dir.glob("*.npy")}
    assert len(after) == len(ImageFolderDataset(PHOTOS, 32).items)
    assert after["0.npy"] == first["0.npy"] and after["2.npy"] == first["2.npy"] and after["1.npy"] != first["1.npy"]
    ds = CodeDataset(codes_dir, labels_dir)
    codes, label = ds[0]
    assert codes.shape == (64,) and codes.dtype == torch.int64 and label == 0
    assert np.load(codes_dir / "0.npy").shape == (2, 64)


def test_check_codes_writes_grid(tmp_path, tiny):
    _, ckpt = tiny
    extract(_args(tmp_path, ckpt, "--max-images", "2"))
    grid = check_codes(["--code-path", str(tmp_path / "codes"), "--image-size", "32", "--model-config", str(TINY),
                        "--vq-ckpt", str(ckpt), "--out", str(tmp_path / "check.png")])
    assert grid.shape == (4, 32, 32, 3) and (tmp_path / "check.png").is_file()


def test_resume_with_another_tokenizer_is_refused(tmp_path):
    from autoregressive.extract_codes import main as extract_main

    from testlib import make_class_images

    images = make_class_images(tmp_path / "img", 1, seed=0)
    torch.manual_seed(1)
    a = save_atomic({"model": build_tokenizer(TINY).state_dict()}, tmp_path / "a.pt")
    torch.manual_seed(2)
    b = save_atomic({"model": build_tokenizer(TINY).state_dict()}, tmp_path / "b.pt")
    common = ["--data-path", str(images), "--code-path", str(tmp_path / "codes"), "--image-size", "32",
              "--model-config", str(TINY), "--device", "cpu", "--num-workers", "0"]
    extract_main([*common, "--vq-ckpt", str(a)])
    with pytest.raises(ValueError, match="extracted with vq_ckpt_sha256="):
        extract_main([*common, "--vq-ckpt", str(b), "--resume"])
    with pytest.raises(ValueError, match="ten_crop=False"):
        extract_main([*common, "--vq-ckpt", str(a), "--resume", "--ten-crop"])
    assert extract_main([*common, "--vq-ckpt", str(a), "--resume"])["written_by_rank0"] == 0  # same: all kept
