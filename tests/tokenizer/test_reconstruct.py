"""The reconstruction driver: outputs, metrics, odd and corrupt images, and torchrun with two processes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tokenizer import build_tokenizer
from tokenizer.reconstruct import main as reconstruct
from utils.checkpoint import save_atomic
from utils.data import ImageFolderDataset, center_crop_arr, to_model_range

from testlib import CONFIGS, PHOTOS, torchrun

TINY = CONFIGS / "VQ_tiny32.yaml"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("rec") / "tiny.pt"
    save_atomic({"model": build_tokenizer(TINY).state_dict()}, path)
    return path


def test_odd_inputs_become_rgb_crops():
    ds = ImageFolderDataset(PHOTOS, image_size=32)
    names = [p.name for p, _ in ds.items]
    assert "camera_gray_odd.png" in names and "astronaut_rgba.png" in names
    for i in range(len(ds)):
        x, label, index = ds[i]
        assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1 and index == i and label == 0


def test_center_crop_matches_adm_rule():
    img = Image.fromarray(np.random.RandomState(0).randint(0, 255, (600, 1000, 3), np.uint8))
    out = center_crop_arr(img, 256)
    assert out.size == (256, 256)
    # 600 >= 512 -> one BOX halving to 500x300, then bicubic to short side 256
    half = img.resize((500, 300), Image.BOX).resize((round(500 * 256 / 300), 256), Image.BICUBIC)
    arr = np.asarray(half)
    left = (arr.shape[1] - 256) // 2
    assert np.array_equal(np.asarray(out), arr[:, left:left + 256])
    assert torch.equal(to_model_range(out)[:, 0, 0] * 127.5 + 127.5, torch.tensor(np.asarray(out)[0, 0]).float())


def test_reconstruction_outputs(tmp_path, tiny_ckpt, capsys):
    data = tmp_path / "data" / "cls"
    data.mkdir(parents=True)
    for p in sorted(PHOTOS.rglob("*.png")):
        shutil.copy(p, data / p.name)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    metrics = reconstruct(["--data-path", str(tmp_path / "data"), "--image-size", "32", "--sample-dir",
                           str(tmp_path / "out"), "--vq-ckpt", str(tiny_ckpt), "--model-config", str(TINY),
                           "--qualitative", "--device", "cpu", "--num-workers", "1", "--per-proc-batch-size", "3",
                           "--run-name", "run"])
    out = tmp_path / "out" / "run"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["num_images"] == 6 and saved["skipped_images"][0].endswith("broken.png")
    assert "broken.png" in capsys.readouterr().out
    assert 0 < saved["psnr"] < 60 and -1 <= saved["ssim"] <= 1 and 0 < saved["codebook_usage"] <= 1
    arr = np.load(out / "run.npz")["arr_0"]
    assert arr.shape == (6, 32, 32, 3) and arr.dtype == np.uint8
    assert (out / "grid.png").is_file() and len(list((out / "compare").glob("*.png"))) == 6
    assert (out / "config.yaml").is_file() and saved["checkpoint_sha256"]
    # the npz holds exactly what the model makes of each image, in dataset order
    model = build_tokenizer(TINY).eval()
    model.load_state_dict(torch.load(tiny_ckpt, weights_only=True)["model"])
    ds = ImageFolderDataset(tmp_path / "data", 32)
    good = [i for i in range(len(ds)) if ds[i][0] is not None]
    x = torch.stack([ds[i][0] for i in good[:2]])
    with torch.no_grad():
        q, _, info = model.encode(x)
        rec = torch.clamp(127.5 * model.decode_code(info[2], q.shape) + 128, 0, 255).permute(0, 2, 3, 1).to(torch.uint8)
    assert np.abs(arr[:2].astype(int) - rec.numpy().astype(int)).max() <= 1


@pytest.mark.slow
def test_torchrun_two_processes_match_single(tmp_path, tiny_ckpt):
    common = ["--data-path", str(PHOTOS), "--image-size", "32", "--vq-ckpt", str(tiny_ckpt),
              "--model-config", str(TINY), "--device", "cpu", "--num-workers", "0", "--run-name", "r"]
    single = reconstruct(common + ["--sample-dir", str(tmp_path / "one")])
    torchrun("tokenizer.reconstruct", [*common, "--sample-dir", str(tmp_path / "two")], timeout=600)
    two = json.loads((tmp_path / "two" / "r" / "metrics.json").read_text())
    assert two["world_size"] == 2 and two["num_images"] == single["num_images"] == 6
    a = np.load(tmp_path / "one" / "r" / "r.npz")["arr_0"]
    b = np.load(tmp_path / "two" / "r" / "r.npz")["arr_0"]
    # batches differ between the runs, so float rounding may flip a uint8 value by one, nothing more
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    assert two["psnr"] == pytest.approx(single["psnr"], abs=1e-2)
    assert two["codebook_usage"] == pytest.approx(single["codebook_usage"], abs=2 / 1024)


def test_lpips_both_averages_rsfid_and_tf32_are_recorded(tmp_path, tiny_ckpt, monkeypatch):
    """metrics.json: lpips = per-image mean, lpips_batch_mean = the original's mean of batch means, rFID and rsFID
    from one evaluation of the reconstructions, and whether TF32 was on."""
    import tokenizer.reconstruct as rec

    class CountingLPIPS:  # image k of the run gets the value k
        def __init__(self, *a, **kw):
            self.values, self.batch_means = [], []

        def update(self, x, y):
            vals = torch.arange(len(self.values), len(self.values) + len(x), dtype=torch.float64)
            self.values += vals.tolist()
            self.batch_means.append(float(vals.mean()))

    calls = []

    def fake_rfid(ref, npz, **kwargs):
        calls.append(kwargs)
        return {"fid": 12.5, "sfid": 34.5}

    monkeypatch.setattr(rec, "LPIPSMetric", CountingLPIPS)
    monkeypatch.setattr(rec, "rfid", fake_rfid)
    ref = tmp_path / "ref.npz"
    np.savez(ref, arr_0=np.zeros((2, 32, 32, 3), np.uint8))
    m = reconstruct(["--data-path", str(PHOTOS), "--image-size", "32", "--sample-dir", str(tmp_path), "--run-name",
                     "r", "--vq-ckpt", str(tiny_ckpt), "--model-config", str(TINY), "--device", "cpu",
                     "--num-workers", "0", "--per-proc-batch-size", "4", "--lpips", "--ref-npz", str(ref)])
    assert m["num_images"] == 6
    assert m["lpips"] == pytest.approx(2.5) and m["lpips_batch_mean"] == pytest.approx((1.5 + 4.5) / 2)
    assert m["rfid"] == 12.5 and m["rsfid"] == 34.5
    assert calls and calls[0]["return_all"] is True and calls[0]["compute_pr"] is False
    assert m["tf32"] is False  # CPU: TF32 does not apply


def test_the_originals_reconstruction_flags(tmp_path, tiny_ckpt, monkeypatch):
    """--gt-npz-path (= --ref-npz), --image-size-eval (metrics and images at that size), --eval-python-path and
    --global-seed are accepted as the original's scripts pass them."""
    import tokenizer.reconstruct as rec

    seen = []
    monkeypatch.setattr(rec, "rfid", lambda ref, npz, **kw: seen.append(np.load(npz)["arr_0"].shape) or
                        {"fid": 1.0, "sfid": 2.0})
    ref = tmp_path / "ref.npz"
    np.savez(ref, arr_0=np.zeros((2, 16, 16, 3), np.uint8))
    m = reconstruct(["--data-path", str(PHOTOS), "--image-size", "32", "--image-size-eval", "16", "--sample-dir",
                     str(tmp_path), "--vq-ckpt", str(tiny_ckpt), "--model-config", str(TINY), "--device", "cpu",
                     "--num-workers", "0", "--gt-npz-path", str(ref), "--eval-python-path", "/opt/tf/bin/python",
                     "--global-seed", "0"])
    assert seen == [(6, 16, 16, 3)] and m["rfid"] == 1.0 and m["image_size_eval"] == 16
    assert m["npz"].endswith("-size-32-size-16.npz") and 0 < m["psnr"] < 60


def test_two_experiments_checkpoints_of_one_name_never_collide(tmp_path, tiny_ckpt):
    """expA/.../0000060.pt and expB/.../0000060.pt get their own folders; an explicit --run-name that holds another
    checkpoint's result is refused, not overwritten."""
    a, b = tmp_path / "expA" / "0000060.pt", tmp_path / "expB" / "0000060.pt"
    a.parent.mkdir()
    b.parent.mkdir()
    shutil.copy(tiny_ckpt, a)
    torch.manual_seed(9)
    save_atomic({"model": build_tokenizer(TINY).state_dict()}, b)
    common = ["--data-path", str(PHOTOS), "--image-size", "32", "--sample-dir", str(tmp_path / "out"),
              "--model-config", str(TINY), "--device", "cpu", "--num-workers", "0"]
    ma = reconstruct([*common, "--vq-ckpt", str(a)])
    mb = reconstruct([*common, "--vq-ckpt", str(b)])
    assert Path(ma["npz"]).parent != Path(mb["npz"]).parent and Path(ma["npz"]).is_file()
    assert ma["checkpoint_sha256"] != mb["checkpoint_sha256"]
    reconstruct([*common, "--vq-ckpt", str(a), "--run-name", "mine"])
    with pytest.raises(ValueError, match="already holds the reconstruction of other inputs .checkpoint_sha256"):
        reconstruct([*common, "--vq-ckpt", str(b), "--run-name", "mine"])
    saved = json.loads((tmp_path / "out" / "mine" / "metrics.json").read_text())
    assert saved["checkpoint_sha256"] == ma["checkpoint_sha256"]  # the first result is still there


def test_lpips_without_vgg_weights_offline_stops_before_writing(tmp_path, tiny_ckpt, monkeypatch, capsys):
    """The README's reconstruction command with --lpips on an offline machine without the VGG16 weights: one clear
    two-line message naming the file and the flag, exit code 2, and no output folder."""
    import urllib.error

    import torchvision.models._api as tv_api

    from utils.cli import run_cli

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("GIGATOK_DEBUG", raising=False)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        run_cli(reconstruct, "reconstruct", ["--data-path", str(PHOTOS), "--image-size", "32", "--sample-dir",
                                             str(out), "--vq-ckpt", str(tiny_ckpt), "--model-config", str(TINY),
                                             "--device", "cpu", "--num-workers", "0", "--lpips"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "vgg16-397923af.pth" in err[0] and "--lpips-vgg-path" in err[1]
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="--lpips-vgg-path .*absent.pth: no such file"):
        reconstruct(["--data-path", str(PHOTOS), "--image-size", "32", "--sample-dir", str(out), "--vq-ckpt",
                     str(tiny_ckpt), "--model-config", str(TINY), "--device", "cpu", "--lpips", "--lpips-vgg-path",
                     str(tmp_path / "absent.pth")])
