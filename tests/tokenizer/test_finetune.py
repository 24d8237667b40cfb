"""Fine-tuning on one's own images at another resolution (issue 29): --init-from takes a release-style file (weights
only: no optimiser, no discriminator) as the start of a new experiment; --image-size builds the tokenizer at 64 px
from 32-px weights (position tables resampled) and the fine-tune reconstructs held-out 64-px images better than the
resampled start; a GPT fine-tune on another class set (rows copied by a class map) samples 64-px class grids; loading
weights into a model of another resolution without saying so is refused."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tokenizer import build_tokenizer, load_tokenizer
from utils.checkpoint import CheckpointError, load_checkpoint_file, save_atomic
from utils.data import ImageFolderDataset

from testlib import CONFIGS, PHOTOS, REPO, child_env, make_images

TINY = CONFIGS / "VQ_tiny32.yaml"
MICRO = ["model.init_args.encoder_size=micro", "model.init_args.decoder_size=micro", "model.init_args.cnn_ch=32",
         "model.init_args.z_channels=32", "model.init_args.codebook_size=256", "loss.params.disc_dim=16"]


def run(*command: str) -> None:
    proc = subprocess.run(list(command), cwd=REPO, env=child_env(GPUS="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def train_tokenizer(data: Path, save: Path, name: str, *extra: str) -> None:
    run("bash", "scripts/train_vq.sh", "--data-path", str(data), "--model-config", str(TINY), "--save-path", str(save),
        "--exp-name", name, "--iterations", "40", "--global-batch-size", "8", "--num-workers", "0",
        "--mixed-precision", "none", "--device", "cpu", "--log-every", "10", "--ckpt-every", "40",
        "--random-loss-nets", "--no-progress", *extra, "--config-overrides", *MICRO, "trainer.lr=2e-3",
        "trainer.warmup=0", "loss.params.disc_start=1000")


def psnr(model: torch.nn.Module, folder: Path, size: int) -> float:
    x = torch.stack([ImageFolderDataset(folder, size)[i][0] for i in range(8)])
    with torch.no_grad():
        mse = F.mse_loss(model(x)[0].clamp(-1, 1), x).item()
    return 10 * torch.log10(torch.tensor(4.0 / mse)).item()  # images in [-1, 1]: peak-to-peak 2


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> dict:
    """A 32-px tokenizer shipped as weights only, and its fine-tune at 64 px through scripts/train_vq.sh."""
    root = tmp_path_factory.mktemp("finetune")
    images, held_out = make_images(root / "train", n=16, seed=1), make_images(root / "held_out", n=8, seed=2)
    train_tokenizer(images, root / "runs", "base32")
    trained = load_checkpoint_file(root / "runs" / "base32" / "checkpoints" / "0000040.pt")["model"]
    release = save_atomic({"model": trained}, root / "release_32px.pt")
    train_tokenizer(images, root / "runs", "ft64", "--init-from", str(release), "--image-size", "64")
    return {"root": root, "images": images, "held_out": held_out, "release": release,
            "ft64": root / "runs" / "ft64" / "checkpoints" / "0000040.pt", "log": root / "runs" / "ft64" / "log.txt"}


def test_tokenizer_finetune_at_64_px_from_a_32_px_release_file(tuned):
    release = tuned["release"]
    with pytest.raises(CheckpointError, match=r"for 32-px images \(8x8 token grid\).*image_size=64"):
        load_tokenizer(TINY, release, overrides=[*MICRO, "model.init_args.image_size=64", "loss.params.image_size=64"])
    before = load_tokenizer(TINY, release, overrides=MICRO, image_size=64)
    assert before.image_size == 64 and before.num_tokens == 64  # 1D: the GPT's sequence length stays
    log = tuned["log"].read_text()
    assert f"fine-tuning from {release}: loaded the model weights; new: optimiser state, step 0, discriminator" in log
    assert "resampled s2to1encoder.positional_embedding: 8x8 -> 16x16 grid (bicubic)" in log
    assert load_checkpoint_file(tuned["ft64"])["config"]["model"]["init_args"]["image_size"] == 64
    after_model = load_tokenizer(tuned["ft64"])  # the checkpoint describes its 64-px model
    after, start = psnr(after_model, tuned["held_out"], 64), psnr(before, tuned["held_out"], 64)
    assert after_model.image_size == 64 and after > start + 0.1, (start, after)


def test_gpt_finetune_on_another_class_set_samples_64_px_grids(tuned, tmp_path):
    """A GPT trained on the 32-px tokenizer's codes (2 classes) starts a fine-tune on the 64-px tokenizer's codes with
    5 classes, rows 0 and 1 copied from its classes 1 and 0 by a class map, the null row kept; it samples 64-px
    grids."""
    from autoregressive.extract_codes import main as extract
    from autoregressive.train_c2i import main as train_gpt
    from tokenizer import read_tokenizer_config
    from utils.config import save_config

    tiny_cfg = tmp_path / "tiny_micro.yaml"
    save_config(read_tokenizer_config(TINY, MICRO), tiny_cfg)
    extract(["--data-path", str(tuned["images"]), "--code-path", str(tmp_path / "codes32"), "--vq-ckpt",
             str(tuned["release"]), "--model-config", str(tiny_cfg), "--device", "cpu", "--num-workers", "0"])
    extract(["--data-path", str(tuned["images"]), "--code-path", str(tmp_path / "codes64"), "--vq-ckpt",
             str(tuned["ft64"]), "--device", "cpu", "--num-workers", "0"])  # the checkpoint describes its 64 px
    common = ["--dataset", "imagenet_code", "--gpt-model", "GPT-tiny", "--global-batch-size", "8", "--lr", "3e-3",
              "--num-workers", "0", "--device", "cpu", "--log-every", "5", "--no-compile", "--mixed-precision",
              "none", "--save-path", str(tmp_path / "gpt")]
    train_gpt([*common, "--tok-config", str(tiny_cfg), "--code-path", str(tmp_path / "codes32"), "--num-classes",
               "2", "--sub-exp-dir", "base", "--iterations", "10", "--ckpt-every", "10"])
    base = tmp_path / "gpt" / "base" / "checkpoints" / "0000010.pt"
    (tmp_path / "map.json").write_text(json.dumps({"0": 1, "1": 0}))
    ft64 = [*common, "--tok-config", str(tmp_path / "ft64.yaml"), "--code-path", str(tmp_path / "codes64"),
            "--num-classes", "5", "--init-from", str(base), "--class-map", str(tmp_path / "map.json")]
    save_config(load_checkpoint_file(tuned["ft64"])["config"], tmp_path / "ft64.yaml")
    train_gpt([*ft64, "--sub-exp-dir", "probe", "--iterations", "1", "--ckpt-every", "1", "--lr", "0"])  # lr 0
    old = load_checkpoint_file(base)["model"]["cls_embedding.embedding_table.weight"]
    new = load_checkpoint_file(tmp_path / "gpt" / "probe" / "checkpoints" / "0000001.pt")["model"][
        "cls_embedding.embedding_table.weight"]
    assert new.shape == (6, old.shape[1]) and torch.equal(new[0], old[1]) and torch.equal(new[1], old[0])
    assert torch.equal(new[-1], old[-1]) and not torch.equal(new[2], old[-1])  # null kept, unmapped rows new
    train_gpt([*ft64, "--sub-exp-dir", "ft", "--iterations", "10", "--ckpt-every", "10"])
    run(sys.executable, "-m", "autoregressive.sample_c2i", "--gpt-ckpt",
        str(tmp_path / "gpt" / "ft" / "checkpoints" / "0000010.pt"), "--vq-ckpt", str(tuned["ft64"]), "--mode",
        "visualize", "--class-idx", "0,4", "--qual-num", "2", "--precision", "none", "--device", "cpu",
        "--sample-dir", str(tmp_path / "samples"))
    from PIL import Image
    samples = [p for p in (tmp_path / "samples").rglob("*.png") if "grid" not in p.name]
    assert samples and all(Image.open(p).size == (64, 64) for p in samples)
    assert len(list((tmp_path / "samples").rglob("multi_class_grid.png"))) == 1


def test_reconstruction_at_another_size_resamples_when_asked(tmp_path):
    """tokenizer.reconstruct --image-size 64 with a 32-px tokenizer runs it at 64 px (tables resampled)."""
    from tokenizer.reconstruct import main as reconstruct

    torch.manual_seed(0)
    release = save_atomic({"model": build_tokenizer(TINY).state_dict()}, tmp_path / "tiny32.pt")
    metrics = reconstruct(["--data-path", str(PHOTOS), "--image-size", "64", "--sample-dir", str(tmp_path / "out"),
                           "--vq-ckpt", str(release), "--model-config", str(TINY), "--device", "cpu",
                           "--num-workers", "0", "--per-proc-batch-size", "2"])
    assert metrics["image_size"] == 64 and metrics["psnr"] > 0
