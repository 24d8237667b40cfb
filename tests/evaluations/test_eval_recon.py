"""PSNR / SSIM as the original reconstruction script computes them, LPIPS wrapper."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from evaluations.recon import LPIPSMetric, psnr, ssim

from _eval_images import photo_crops


@pytest.fixture(scope="module")
def pair():
    gt = photo_crops(3, size=64, seed=3).astype(np.float32) / 255.0
    rng = np.random.default_rng(0)
    rec = np.clip(np.rint((gt + rng.normal(0, 0.05, gt.shape)) * 255), 0, 255).astype(np.uint8)
    return rec.astype(np.float32) / 255.0, gt  # (uint8 reconstruction / 255, float ground truth), as the original


def test_psnr_hand_computed_and_skimage(pair):
    rec, gt = pair
    got = psnr(rec, gt)
    mse = ((rec.astype(np.float64) - gt) ** 2).reshape(3, -1).mean(1)
    np.testing.assert_allclose(got, 10 * np.log10(1.0 / mse), rtol=1e-6)
    np.testing.assert_allclose(got, [peak_signal_noise_ratio(r, g) for r, g in zip(rec, gt, strict=True)], rtol=1e-6)
    a = np.zeros((8, 8, 3), np.float32)
    b = np.full((8, 8, 3), 0.1, np.float32)
    assert psnr(a, b)[0] == pytest.approx(20.0)          # 10 log10(1 / 0.01)
    assert psnr(b - 0.2, b, data_range=2.0)[0] == pytest.approx(10 * np.log10(4 / 0.04), rel=1e-5)
    assert np.isinf(psnr(b, b)[0])


def test_ssim_faithful_quirk_and_correct_against_skimage(pair):
    rec, gt = pair
    faithful = ssim(rec, gt)                      # data_range=2.0 as the original
    correct = ssim(rec, gt, faithful=False)       # data_range=1.0
    sk2 = [structural_similarity(r, g, data_range=2.0, channel_axis=-1) for r, g in zip(rec, gt, strict=True)]
    sk1 = [structural_similarity(r, g, data_range=1.0, channel_axis=-1) for r, g in zip(rec, gt, strict=True)]
    np.testing.assert_allclose(faithful, sk2, atol=1e-5)
    np.testing.assert_allclose(correct, sk1, atol=1e-5)
    assert np.all(faithful > correct)             # the quirk inflates SSIM


def test_ssim_hand_computed_constant_images():
    a = np.full((16, 16, 3), 0.2, np.float32)
    b = np.full((16, 16, 3), 0.6, np.float32)
    # zero variance: S = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) * (C2 / C2)
    for faithful, r in ((True, 2.0), (False, 1.0)):
        c1 = (0.01 * r) ** 2
        expected = (2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1)
        assert ssim(a, b, faithful=faithful)[0] == pytest.approx(expected, rel=1e-5)
    assert ssim(a, a)[0] == pytest.approx(1.0)


def test_metric_input_checks():
    with pytest.raises(ValueError, match="uint8"):
        psnr(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="shape mismatch"):
        ssim(np.zeros((8, 8, 3), np.float32), np.zeros((9, 8, 3), np.float32))
    with pytest.raises(ValueError, match="window"):
        ssim(np.zeros((5, 5, 3), np.float32), np.zeros((5, 5, 3), np.float32))


@pytest.fixture(scope="module")
def lpips_metric():
    return LPIPSMetric(device="cpu", pretrained_backbone=False)  # no torchvision download in tests


def test_lpips_wrapper(lpips_metric, pair):
    rec, gt = pair
    x = torch.from_numpy(gt).permute(0, 3, 1, 2) * 2 - 1
    y = torch.from_numpy(rec).permute(0, 3, 1, 2) * 2 - 1
    same = lpips_metric(x, x)
    assert same.shape == (3,) and torch.allclose(same, torch.zeros(3), atol=1e-6)
    d = lpips_metric(x, y)
    assert torch.all(d > 0)
    lpips_metric.reset()
    lpips_metric.update(x[:2], y[:2])
    lpips_metric.update(x[2:], y[2:])
    per_image = d.numpy()
    # the original: mean of per-batch means (the short last batch weighs as much as a full one)
    assert lpips_metric.compute() == pytest.approx(np.mean([per_image[:2].mean(), per_image[2]]), rel=1e-5)
    assert lpips_metric.compute(faithful=False) == pytest.approx(per_image.mean(), rel=1e-5)


def test_lpips_local_vgg_weights(lpips_metric, tmp_path):
    convs = [(i, m) for s in ("slice1", "slice2", "slice3", "slice4", "slice5")
             for i, m in getattr(lpips_metric.model.net, s).named_children() if isinstance(m, torch.nn.Conv2d)]
    g = torch.Generator().manual_seed(0)
    sd = {}
    for idx, conv in convs:
        sd[f"features.{idx}.weight"] = torch.randn(conv.weight.shape, generator=g) * 0.01
        sd[f"features.{idx}.bias"] = torch.zeros(conv.bias.shape)
    path = tmp_path / "vgg16_features.pth"
    torch.save(sd, path)
    metric = LPIPSMetric(device="cpu", vgg_weights_path=path)
    idx, conv = convs[0]
    loaded = dict(metric.model.net.slice1.named_children())[idx]
    assert torch.equal(loaded.weight, sd[f"features.{idx}.weight"])
    torch.save({k: v for k, v in sd.items() if "features.0." not in k}, tmp_path / "partial.pth")
    with pytest.raises(KeyError, match="features.0"):
        LPIPSMetric(device="cpu", vgg_weights_path=tmp_path / "partial.pth")


def test_make_val_npz_builds_reference_and_pngs(tmp_path):
    from PIL import Image

    from evaluations.make_val_npz import main as make_val
    from utils.data import center_crop_arr

    from _eval_images import source_photos
    photos = source_photos()[:3]
    src = tmp_path / "val"
    for i, p in enumerate(photos):
        (src / f"n0{i}").mkdir(parents=True)
        Image.fromarray(p).save(src / f"n0{i}" / f"img_{i}.JPEG", quality=95)
    npz = tmp_path / "val_imagenet.npz"
    assert make_val(["--data-path", str(src), "--npz", str(npz), "--png-dir", str(tmp_path / "png"),
                     "--image-size", "64", "--workers", "0"]) == 0
    arr = np.load(npz)["arr_0"]
    assert arr.shape == (3, 64, 64, 3) and arr.dtype == np.uint8
    for i in range(3):
        with Image.open(src / f"n0{i}" / f"img_{i}.JPEG") as img:
            expected = np.asarray(center_crop_arr(img.convert("RGB"), 64))
        np.testing.assert_array_equal(arr[i], expected)
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "png" / f"n0{i}" / f"img_{i}.png")), arr[i])


def test_make_val_npz_accepts_the_original_val_sh_flags(tmp_path):
    """The documented ``val.sh --sample-dir`` command: PNGs in SAMPLE_DIR/val_imagenet/, npz beside them."""
    from PIL import Image

    from evaluations.make_val_npz import main as make_val

    src = tmp_path / "val" / "n01"
    src.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(src / f"img_{i}.JPEG")
    out = tmp_path / "reconstructions"
    assert make_val(["--data-path", str(tmp_path / "val"), "--sample-dir", str(out), "--image-size", "32",
                     "--per-proc-batch-size", "1", "--global-seed", "0", "--num-workers", "0"]) == 0
    arr = np.load(out / "val_imagenet.npz")["arr_0"]
    assert arr.shape == (2, 32, 32, 3)
    assert sorted(p.name for p in (out / "val_imagenet").rglob("*.png")) == ["img_0.png", "img_1.png"]
