"""The tokenizer trainer: it learns, checkpoints load, resume is exact (also after SIGKILL under torchrun DDP and
from an FSDP2 checkpoint), corrupt images are skipped and reported, NaN stops the run, LR schedules.

To stay fast on a shared 2-core CPU the runs use VQ_tiny32 shrunk further by config overrides and the "micro" ViT
size (width 64, 2 layers); under torchrun this file is itself the entry script (see the bottom).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

if __name__ != "__main__":
    import testlib
    from testlib import CONFIGS, REPO, child_env, make_images
else:  # torchrun entry: make the repo importable
    REPO = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(REPO))
    CONFIGS = REPO / "configs" / "vq"

import torch.nn.functional as F  # noqa: E402

from tokenizer import build_tokenizer, load_tokenizer  # noqa: E402
from tokenizer.train import EXIT_DIVERGED, TrainingDiverged  # noqa: E402
from tokenizer.train import main as train_main
from utils.checkpoint import CheckpointError, list_step_checkpoints, load_checkpoint_file  # noqa: E402
from utils.config import ConfigError  # noqa: E402
from utils.data import ImageFolderDataset, random_crop_arr, train_transform  # noqa: E402
from utils.logging import read_metrics  # noqa: E402
from utils.lr import LRSchedule  # noqa: E402

TINY = CONFIGS / "VQ_tiny32.yaml"
MICRO = ["model.init_args.encoder_size=micro", "model.init_args.decoder_size=micro", "model.init_args.cnn_ch=32",
         "model.init_args.z_channels=32", "model.init_args.codebook_size=256", "loss.params.disc_dim=16"]
LOSS_KEYS = ("loss", "generator_loss", "rec_loss", "vq_loss", "commit_loss", "entropy_loss", "grad_norm",
             "discriminator_loss", "generator_adv_loss", "codebook_usage", "lr", "lr_disc", "epoch")


# ---------------------------------------------------------------------------------------------------------------
# helpers

@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("train_data") / "images")


def train_args(data: Path, save: Path, name: str, iterations: int, *extra: str, overrides=(),
               micro: bool = True) -> list[str]:
    return ["--data-path", str(data), "--model-config", str(TINY), "--save-path", str(save), "--exp-name", name,
            "--iterations", str(iterations), "--global-batch-size", "4", "--num-workers", "0",
            "--mixed-precision", "none", "--device", "cpu", "--log-every", "1", "--random-loss-nets",
            "--no-progress", *extra, "--config-overrides", *(MICRO if micro else ()), *overrides]


def torchrun(args: list[str], timeout: int = 240):
    """This file under torchrun (its __main__ block runs the trainer)."""
    return testlib.torchrun(__file__, args, timeout=timeout)


def assert_same_losses(ref: dict, other: dict, steps, keys=LOSS_KEYS) -> None:
    for step in steps:
        for key in keys:
            if key in ref[step] or key in other[step]:
                assert other[step][key] == ref[step][key], (step, key, ref[step][key], other[step][key])


def ckpt_steps(exp: Path) -> list[int]:
    folders = [exp / "checkpoints", *sorted((exp / "cd_records").glob("*/checkpoints"))]
    return sorted(step for folder in folders for step, _ in list_step_checkpoints(folder))


# ---------------------------------------------------------------------------------------------------------------
# schedules and augmentation (no training)

def test_lr_schedule_boundaries():
    base, end, w, t = 1e-4, 1e-5, 10, 110
    cos2 = LRSchedule("cosine_v2", base, t, warmup=w, end_lr=end)
    assert cos2(0) == pytest.approx(base / 100) and cos2(5) == pytest.approx(base * (0.01 + 0.99 * 0.5))
    assert cos2(w) == pytest.approx(base) and cos2(w + 50) == pytest.approx((base + end) / 2)
    assert cos2(t - 1) == pytest.approx(end + 0.5 * (base - end) * (1 + math.cos(math.pi * 99 / 100)))
    assert cos2(t) == end and cos2(t + 1000) == end
    assert LRSchedule("cosine_v2", base, t)(0) == base  # no warmup: starts at base
    cos = LRSchedule("cosine", base, t, warmup=w)
    assert cos(w) == pytest.approx(base) and cos(t) == 0.0 and cos(w + 50) == pytest.approx(base / 2)
    const = LRSchedule("const", base, t, warmup=w)
    assert const(w - 1) < base and const(w) == base and const(10 * t) == base
    wsd = LRSchedule("wsd", base, 100, warmup=w, fract_decay=0.2)
    assert wsd.wsd_decay_start == 80 and wsd(79) == base and wsd(80) == base
    assert wsd(85) == pytest.approx(base * (1 - math.sqrt(5 / 20))) and wsd(100) == 0.0 and wsd(150) == 0.0
    # degenerate settings do not divide by zero
    assert LRSchedule("cosine_v2", base, 10, warmup=10, end_lr=end)(10) == end
    assert LRSchedule("wsd", base, 3, fract_decay=0.2)(2) == base
    assert LRSchedule("cosine", base, 0)(0) == 0.0
    # the original's off-by-one: update 0 at base, update s at f(s-1); the discriminator's first update at base
    assert cos2.lr_for_update(0, lag=True) == base and cos2.lr_for_update(6, lag=True) == cos2(5)
    assert cos2.lr_for_update(6) == cos2(6) and cos2.lr_for_update(40, lag=True, first_update=40) == base
    with pytest.raises(ValueError, match="lr_scheduler"):
        LRSchedule("linear", base, t)


def test_train_augmentation_is_seeded_and_adm_shaped():
    import random
    img = Image.fromarray(np.random.RandomState(1).randint(0, 255, (300, 700, 3), np.uint8))
    a = train_transform(img, 256, random.Random(5))
    b = train_transform(img, 256, random.Random(5))
    assert a.shape == (3, 256, 256) and torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, train_transform(img, 256, random.Random(6)))
    # short side drawn from [256, 320]; with short side 300 no BOX halving; crop top first, then left
    out = np.asarray(random_crop_arr(img, 256, random.Random(0)))
    ref = random.Random(0)
    side = ref.randrange(256, 321)
    resized = np.asarray(img.resize((round(700 * side / 300), side), Image.BICUBIC))
    y = ref.randrange(resized.shape[0] - 256 + 1)
    x = ref.randrange(resized.shape[1] - 256 + 1)
    assert np.array_equal(out, resized[y:y + 256, x:x + 256])


# ---------------------------------------------------------------------------------------------------------------
# single-process training

def test_training_reduces_loss_and_writes_loadable_checkpoints(images, tmp_path):
    res = train_main(train_args(images, tmp_path, "learn", 40, "--ckpt-every", "20",
                                overrides=["trainer.lr=1e-3", "trainer.warmup=5", "trainer.end_lr=1e-4"]))
    exp = tmp_path / "learn"
    m = read_metrics(exp / "metrics.jsonl")
    assert sorted(m) == list(range(1, 41)) and res["steps"] == 40
    assert (exp / "curves.png").is_file()  # redrawn at each checkpoint (utils.plot_run)
    for key in ("loss", "rec_loss"):  # per-batch values are noisy (4 images): compare window means
        first, last = np.mean([m[s][key] for s in range(1, 6)]), np.mean([m[s][key] for s in range(31, 41)])
        assert last < 0.8 * first, (key, first, last)
    # and on a fixed set: the trained model reconstructs the (centre-cropped) images better than its init
    x = torch.stack([ImageFolderDataset(images, 32)[i][0] for i in range(16)])
    trained = load_tokenizer(exp / "config.yaml", exp / "checkpoints" / "0000040.pt")
    init = build_tokenizer(exp / "config.yaml").eval()
    with torch.no_grad():
        mse_trained, mse_init = F.mse_loss(trained(x)[0], x).item(), F.mse_loss(init(x)[0], x).item()
    assert mse_trained < 0.8 * mse_init, (mse_trained, mse_init)
    # the LR of update s (logged at step s + 1) is the cosine_v2 schedule at s
    sched = LRSchedule("cosine_v2", 1e-3, 40, warmup=5, end_lr=1e-4)
    for s in (0, 4, 5, 20, 39):
        assert m[s + 1]["lr"] == pytest.approx(sched(s))
    # layout and content
    assert ckpt_steps(exp) == [20, 40]
    assert (exp / "config.yaml").is_file() and (exp / "log.txt").is_file()
    assert "(step=0000040) Train Loss" in (exp / "log.txt").read_text()
    ckpt = load_checkpoint_file(exp / "checkpoints" / "0000040.pt")
    assert {"model", "optimizer", "discriminator", "optimizer_disc", "steps", "args", "config", "lecam_states",
            "trainer_state"} <= set(ckpt) and ckpt["steps"] == 40 and "ema" not in ckpt
    # the checkpoint describes its run: every setting, the tokenizer config, the layout version
    assert ckpt["format_version"] == 1 and ckpt["kind"] == "tokenizer" and ckpt["args"]["lr"] == 1e-3
    assert ckpt["config"]["model"]["init_args"]["encoder_size"] == "micro" and "rank_states" not in ckpt
    model = load_tokenizer(exp / "config.yaml", exp / "checkpoints" / "0000040.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt["model"].items())
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32) * 2 - 1
        assert model(x)[0].shape == x.shape
    # a second run into the same experiment without auto-resume is refused; with it, nothing is left to do
    with pytest.raises(ConfigError, match="already has checkpoints"):
        train_main(train_args(images, tmp_path, "learn", 40, "--no-auto-resume"))


def test_resume_in_process_is_exact(images, tmp_path):
    """Stop at a checkpoint (early stop), resume: identical per-step losses to the uninterrupted run, with
    dropout (RNG), the discriminator, EMA and gradient accumulation all active."""
    extra = ("--ckpt-every", "3", "--ema", "--gradient-accumulation-steps", "2")
    over = ["model.init_args.dropout_p=0.1", "loss.params.disc_start=2", "trainer.lr=2e-3"]
    train_main(train_args(images, tmp_path, "ref", 7, *extra, overrides=over))
    train_main(train_args(images, tmp_path, "split", 7, *extra, "--early-stop-iter", "3", overrides=over))
    assert ckpt_steps(tmp_path / "split") == [3]
    train_main(train_args(images, tmp_path, "split", 7, *extra, overrides=over))
    ref, split = read_metrics(tmp_path / "ref" / "metrics.jsonl"), read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert sorted(split) == list(range(1, 8))
    assert split[5]["discriminator_loss"] > 0
    assert_same_losses(ref, split, range(1, 8))
    a = load_checkpoint_file(tmp_path / "ref" / "checkpoints" / "0000007.pt")
    b = load_checkpoint_file(tmp_path / "split" / "checkpoints" / "0000007.pt")
    for key in ("model", "ema", "discriminator"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert "Resume training from checkpoint" in (tmp_path / "split" / "message.txt").read_text()


def _as_version0(ckpt: dict, argv: list[str]) -> dict:
    """A checkpoint in the layout today's trainer wrote before format_version 1: the launch's flags as an
    argparse.Namespace (None where the YAML decided), per-rank RNG and LeCam states, a few resolved run settings."""
    import argparse
    old = {k: v for k, v in ckpt.items() if k not in ("format_version", "kind", "lecam_states", "scaler_disc")}
    settings = ckpt["args"]
    flags = {"data_path": settings["data_path"], "model_config": settings["model_config"], "iterations": None,
             "ema": settings["ema"] if "--ema" in argv else None, "mixed_precision": settings["mixed_precision"],
             "global_batch_size": settings["global_batch_size"], "warmup": None, "fract_decay": None,
             "gradient_accumulation_steps": settings["gradient_accumulation_steps"], "original_lr_lag": False}
    old["args"] = argparse.Namespace(**flags)
    old["run_settings"] = {"precision": settings["mixed_precision"], "ema": settings["ema"], "seed": 0,
                           "ema_decay": settings["ema_decay"], "warmup": None, "fract_decay": None,
                           "original_lr_lag": False, "image_size": 32}
    old["rank_states"] = [{"rng": {"torch": torch.get_rng_state()}, "lecam": state}
                          for state in ckpt["lecam_states"]]
    old["scaler"], old["scaler_disc"] = ckpt["scaler"], ckpt["scaler_disc"]
    return old


def test_version0_checkpoint_resumes_exactly(images, tmp_path):
    """A checkpoint in the layout written before format_version 1 (written here from a run's own checkpoint) still
    resumes, its settings are still compared, and the resumed run ends where the uninterrupted one does."""
    extra = ("--ckpt-every", "3", "--ema")
    over = ["loss.params.disc_start=2", "loss.params.lecam=true"]
    train_main(train_args(images, tmp_path, "ref", 6, *extra, overrides=over))
    argv = train_args(images, tmp_path, "old", 6, *extra, overrides=over)
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    written = load_checkpoint_file(tmp_path / "ref" / "checkpoints" / "0000003.pt")
    torch.save(_as_version0(written, argv), tmp_path / "old" / "checkpoints" / "0000003.pt")
    with pytest.raises(ConfigError, match=r"mixed_precision: 'none' -> 'fp32'"):
        train_main([*argv[:argv.index("--mixed-precision") + 1], "fp32", *argv[argv.index("--mixed-precision") + 2:]])
    train_main(argv)
    ref, old = read_metrics(tmp_path / "ref" / "metrics.jsonl"), read_metrics(tmp_path / "old" / "metrics.jsonl")
    assert sorted(old) == [4, 5, 6]
    assert_same_losses(ref, old, [4, 5, 6])
    a = load_checkpoint_file(tmp_path / "ref" / "checkpoints" / "0000006.pt")
    b = load_checkpoint_file(tmp_path / "old" / "checkpoints" / "0000006.pt")
    for key in ("model", "ema", "discriminator"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert b["format_version"] == 1 and b["lecam_states"] == a["lecam_states"]


def test_generator_is_updated_from_gen_start_on(images, tmp_path):
    """loss.params.gen_start = 3: iterations t = 1, 2 run the generator forward but do not update it (as the
    original); t = 3 does."""
    train_main(train_args(images, tmp_path, "gen", 3, "--ckpt-every", "1", overrides=["+loss.params.gen_start=3"]))
    states = [load_checkpoint_file(tmp_path / "gen" / "checkpoints" / f"{s:07d}.pt")["model"] for s in (1, 2, 3)]
    params = [k for k in states[0] if k != "quantize.codebook_used"]

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in params)
    assert same(states[0], states[1]) and not same(states[1], states[2])
    m = read_metrics(tmp_path / "gen" / "metrics.jsonl")
    assert m[1]["grad_norm"] == 0.0 and m[3]["grad_norm"] > 0


def test_config_init_ckpt_starts_a_new_experiment_from_its_weights(images, tmp_path):
    """model.init_ckpt (the original's): a new experiment loads its weights and optimiser state, at step 0."""
    train_main(train_args(images, tmp_path, "base", 2, "--ckpt-every", "2"))
    base = tmp_path / "base" / "checkpoints" / "0000002.pt"
    train_main(train_args(images, tmp_path, "init", 1, "--early-stop-iter", "0",
                          overrides=[f"+model.init_ckpt={base}"]))
    log = (tmp_path / "init" / "log.txt").read_text()
    assert f"from {base}; continuing at step 0" in log
    train_main(train_args(images, tmp_path, "init2", 1, "--ckpt-every", "1", overrides=[f"+model.init_ckpt={base}"]))
    assert ckpt_steps(tmp_path / "init2") == [1]  # step 0 -> 1, not 2 -> 3


def _original_style_checkpoint(config: Path, path: Path, overrides=()) -> dict:
    """What the original's DDP trainer saves: model, an index-keyed AdamW state over model.parameters() (one group,
    in the original's parameter order) and steps, after one update."""
    torch.manual_seed(0)
    model = build_tokenizer(config, list(overrides)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(x)
    (out[0][0] - x).pow(2).mean().backward()
    opt.step()
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "steps": 1}
    torch.save(ckpt, path)
    return ckpt


def test_original_2d_checkpoint_resumes_with_its_adamw_moments_on_the_right_tensors(images, tmp_path):
    """The 2D ViTs register their modules in the original's order, so an index-keyed optimiser state from the
    original's trainer lands on the tensors it belongs to (tested against the original's key order in
    test_manifests) and the next step trains."""
    cfg = CONFIGS / "VQ_tiny32_2d.yaml"
    original = _original_style_checkpoint(cfg, tmp_path / "orig.pt")
    args = train_args(images, tmp_path, "resume2d", 2, "--vq-ckpt", str(tmp_path / "orig.pt"), "--ckpt-every", "2",
                      micro=False)
    args[args.index("--model-config") + 1] = str(cfg)
    train_main(args)
    log = (tmp_path / "resume2d" / "log.txt").read_text()
    assert "loaded model, optimizer" in log and "continuing at step 1" in log
    ckpt = load_checkpoint_file(tmp_path / "resume2d" / "checkpoints" / "0000002.pt")
    names = [n for n, _ in build_tokenizer(cfg).named_parameters()]
    moments = ckpt["optimizer"]["state"]
    had_moments = {names[i] for i in original["optimizer"]["state"]}  # index -> name in the original's order
    assert had_moments and had_moments <= set(moments)  # the distill head (off here) never had any
    for name in moments:  # every moment still has its own parameter's shape
        assert moments[name]["exp_avg"].shape == ckpt["model"][name].shape, name


def test_original_fsdp_checkpoint_needs_reset_optimizer(images, tmp_path):
    """The original's FSDP trainer keeps AdamW moments in per-rank shards beside the checkpoint; resuming from it
    is refused with the reason unless --reset-optimizer, which then warns and trains."""
    exp = tmp_path / "fsdp_orig"
    ckpt = _original_style_checkpoint(TINY, tmp_path / "full.pt", MICRO)
    (exp / "checkpoints").mkdir(parents=True)
    torch.save({"model": ckpt["model"], "steps": 1}, exp / "checkpoints" / "0000001.pt")
    shard_dir = exp / "optim_checkpoints" / "0000001"
    shard_dir.mkdir(parents=True)
    for r in range(2):
        torch.save({"state": {}, "param_groups": []}, shard_dir / f"optimizer.{r:05d}-of-00002.pt")
    args = train_args(images, tmp_path, "fsdp_orig", 2, "--ckpt-every", "2")
    with pytest.raises(CheckpointError, match=r"original FSDP checkpoint.*--reset-optimizer"):
        train_main(args)
    train_main(args + ["--reset-optimizer"])
    log = (exp / "log.txt").read_text()
    assert "no optimizer state; AdamW restarts from zero moments (--reset-optimizer)" in log
    assert ckpt_steps(exp) == [1, 2]


def test_resume_with_a_changed_config_is_refused_by_key(images, tmp_path):
    """Settings that change the model, loss or optimisation cannot slip into a resume; schedule-only ones can, and
    the first segment's config.yaml stays."""
    train_main(train_args(images, tmp_path, "cfg", 4, "--ckpt-every", "2", "--early-stop-iter", "2"))
    exp = tmp_path / "cfg"
    first = (exp / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"model\.init_args\.entropy_loss_ratio: 0\.005 -> 0\.5"):
        train_main(train_args(images, tmp_path, "cfg", 4, "--ckpt-every", "2",
                              overrides=["model.init_args.entropy_loss_ratio=0.5"]))
    with pytest.raises(ConfigError, match=r"ema: False -> True"):
        train_main(train_args(images, tmp_path, "cfg", 4, "--ckpt-every", "2", "--ema"))
    assert ckpt_steps(exp) == [2]  # nothing was trained by the refused launches
    # schedule-only: more iterations and another cadence continue as the same run
    train_main(train_args(images, tmp_path, "cfg", 5, "--ckpt-every", "3", "--early-stop-iter", "3",
                          overrides=["+trainer.log_every=2"]))
    assert (exp / "config.yaml").read_text() == first and ckpt_steps(exp)[-1] == 3
    assert (exp / "config.resume-0000002.yaml").is_file()  # the second segment's record, beside the first
    # deliberately accepted, and logged
    train_main(train_args(images, tmp_path, "cfg", 5, "--allow-config-change", overrides=["trainer.lr=2e-3"]))
    assert "--allow-config-change: resuming" in (exp / "log.txt").read_text()


def test_corrupt_image_is_skipped_and_reported(tmp_path):
    data = make_images(tmp_path / "data", n=8)
    (data / "class0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (data / "class1" / "empty.jpg").write_bytes(b"")
    args = train_args(data, tmp_path, "corrupt", 6, "--ckpt-every", "6")
    args[args.index("--num-workers") + 1] = "1"  # the report must cross the worker boundary
    train_main(args)
    log = (tmp_path / "corrupt" / "log.txt").read_text()
    assert "skipped unreadable image" in log and "broken.png" in log and "empty.jpg" in log
    m = read_metrics(tmp_path / "corrupt" / "metrics.jsonl")
    assert sorted(m) == list(range(1, 7)) and all(np.isfinite(m[s]["loss"]) for s in m)
    skipped = [s for rec in m.values() for s in rec.get("skipped_images", [])]
    assert any("broken.png" in s for s in skipped) and any("empty.jpg" in s for s in skipped)
    assert ckpt_steps(tmp_path / "corrupt") == [6]


def test_nan_stops_with_message_and_keeps_last_good_checkpoint(images, tmp_path):
    train_main(train_args(images, tmp_path, "nan", 8, "--ckpt-every", "2", "--early-stop-iter", "4"))
    assert ckpt_steps(tmp_path / "nan") == [2, 4]
    exp = tmp_path / "nan"
    # continue with an infinite LR: the first update makes the weights non-finite -> the checkpoint is refused
    with pytest.raises(TrainingDiverged, match=r"non-finite weights at step 5: checkpoint not written; last good "
                                               r"checkpoint: .*0000004\.pt"):
        train_main(train_args(images, tmp_path, "nan", 8, "--ckpt-every", "1", "--allow-config-change",
                              overrides=["trainer.lr=.inf", "trainer.warmup=0"]))
    assert ckpt_steps(exp) == [2, 4]
    # continue with an absurd finite LR: the weights blow up and the next loss is non-finite
    with pytest.raises(TrainingDiverged) as info:
        train_main(train_args(images, tmp_path, "nan", 8, "--ckpt-every", "1", "--allow-config-change",
                              overrides=["trainer.lr=1e30", "trainer.warmup=0"]))
    msg = str(info.value)
    steps = ckpt_steps(exp)
    assert "non-finite" in msg and "rec_loss" in msg and f"{max(steps):07d}.pt" in msg, msg
    failed_at = int(msg.split("iteration ")[1].split()[0])
    assert max(steps) < failed_at
    for s in steps:  # every checkpoint that exists is finite
        sd = load_checkpoint_file(exp / "checkpoints" / f"{s:07d}.pt")["model"]
        assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())
    log = (exp / "log.txt").read_text()
    assert "ERROR: non-finite weights" in log and "ERROR: non-finite generator loss" in log
    # the command line (plain VQ_tiny32, one iteration) reports it with exit code 3
    proc = subprocess.run([sys.executable, "-m", "tokenizer.train", *train_args(
        images, tmp_path, "cli", 1, "--ckpt-every", "1", overrides=["trainer.lr=.inf"], micro=False)],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_DIVERGED and "training stopped: non-finite" in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------------
# torchrun: DDP (with a real SIGKILL) and FSDP2, two CPU processes with gloo

@pytest.mark.slow
def test_ddp_two_processes_and_sigkill_resume(images, tmp_path):
    extra = ("--ckpt-every", "3", "--ema")
    over = ["loss.params.disc_start=3", "model.init_args.dropout_p=0.1"]
    torchrun(train_args(images, tmp_path, "ref", 7, *extra, overrides=over))
    ref_exp = tmp_path / "ref"
    assert ckpt_steps(ref_exp) == [3, 6, 7]
    ckpt = load_checkpoint_file(ref_exp / "checkpoints" / "0000007.pt")
    assert ckpt["trainer_state"]["world_size"] == 2 and len(ckpt["lecam_states"]) == 2 and "ema" in ckpt
    model = load_tokenizer(ref_exp / "config.yaml", ref_exp / "checkpoints" / "0000007.pt")  # uses "ema"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt["ema"].items())

    # the same run, killed with SIGKILL (all processes) soon after its first checkpoint, then restarted
    args = train_args(images, tmp_path, "killed", 7, *extra, overrides=over)
    proc = subprocess.Popen(testlib.torchrun_cmd(__file__, args), cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    first = tmp_path / "killed" / "checkpoints" / "0000003.pt"
    deadline = time.time() + 180
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = ckpt_steps(tmp_path / "killed")
    assert done and 7 not in done, f"the run was not interrupted mid-way (checkpoints {done})"
    torchrun(args)
    ref, killed = read_metrics(ref_exp / "metrics.jsonl"), read_metrics(tmp_path / "killed" / "metrics.jsonl")
    assert sorted(killed) == list(range(1, 8))
    assert_same_losses(ref, killed, range(1, 8))
    assert "Resume training from checkpoint" in (tmp_path / "killed" / "message.txt").read_text()


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_one_run_per_folder_and_workers_die_with_their_launcher(images, tmp_path, capsys):
    """A second launch into a running experiment stops at once naming the owner; killing only the torchrun launcher
    takes its workers down within seconds (the SIGTERM it leaves them checkpoints their step and releases the lock,
    as any stop signal does); the next launch resumes."""
    args = train_args(images, tmp_path, "locked", 400, "--ckpt-every", "1")
    proc = subprocess.Popen(testlib.torchrun_cmd(__file__, args), cwd=REPO, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    exp = tmp_path / "locked"
    try:
        deadline = time.time() + 180
        while not (exp / "checkpoints" / "0000001.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        owner = json.loads((exp / ".lock").read_text())
        with pytest.raises(ConfigError, match=f"in use by pid {owner['pid']}"):
            train_main(args)
        workers = _children(proc.pid)
        assert owner["pid"] in workers
        os.kill(proc.pid, signal.SIGKILL)  # the launcher only, not its process group
        proc.wait()
        deadline = time.time() + 20
        while any(_running(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_running(w) for w in workers), "workers outlived their launcher"
    finally:
        with contextlib.suppress(ProcessLookupError):  # normally all gone already
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (exp / ".lock").exists()  # released by the stopped run
    done = max(ckpt_steps(exp))
    train_main(train_args(images, tmp_path, "locked", 400, "--ckpt-every", "1", "--early-stop-iter", str(done + 1)))
    assert "taking over the stale lock" not in capsys.readouterr().out
    assert not (exp / ".lock").exists() and max(ckpt_steps(exp)) == done + 1


@pytest.mark.slow
def test_one_line_error_and_exit_code_under_torchrun(images, tmp_path):
    """Through scripts/train_vq.sh with two torchrun workers, a diverged run ends with its one-line message as the
    last line the user sees and the documented exit code 3, and a bad input with 2; no worker traceback. Stale
    temporary files of interrupted checkpoint writes are removed at start."""
    exp = tmp_path / "div"
    (exp / "checkpoints").mkdir(parents=True)
    stale = exp / "checkpoints" / ".0000004.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    env = child_env(GPUS="2", PORT=str(testlib.free_port()))
    args = train_args(images, tmp_path, "div", 2, overrides=["trainer.lr=.inf"])
    proc = subprocess.run(["bash", "scripts/train_vq.sh", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == EXIT_DIVERGED, proc.stderr[-3000:]
    assert last.startswith("[tokenizer.train] training stopped: non-finite"), last
    assert 'tokenizer/train.py", line' not in proc.stderr  # no worker traceback (torchrun still prints its report)
    assert not stale.exists()
    bad = train_args(images, tmp_path, "bad", 2, overrides=["model.init_args.codebook_size=abc"])
    proc = subprocess.run(["bash", "scripts/train_vq.sh", *bad], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and 'tokenizer/config.py", line' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("[tokenizer.train] error: model.init_args.codebook_size must be "
                                                    "int, got 'abc' (str)")


@pytest.mark.slow
def test_fsdp_two_processes_checkpoint_loads_and_resumes(images, tmp_path):
    extra = ("--ckpt-every", "2", "--data-parallel", "fsdp", "--ema")
    over = ["loss.params.disc_start=2"]
    torchrun(train_args(images, tmp_path, "fsdp", 3, *extra, overrides=over))
    exp = tmp_path / "fsdp"
    assert ckpt_steps(exp) == [2, 3]
    ckpt = load_checkpoint_file(exp / "checkpoints" / "0000003.pt")
    assert ckpt["args"]["data_parallel"] == "fsdp"
    # full (unsharded) state dicts with the plain model's keys
    model = load_tokenizer(exp / "config.yaml", exp / "checkpoints" / "0000003.pt")
    assert set(ckpt["model"]) == set(model.state_dict()) and set(ckpt["ema"]) == set(model.state_dict())
    assert all(isinstance(k, str) for k in ckpt["optimizer"]["state"])  # keyed by parameter name, full tensors
    assert ckpt["optimizer"]["state"] and all(
        v["exp_avg"].shape == ckpt["model"][k].shape for k, v in ckpt["optimizer"]["state"].items())
    # resume from the step-2 checkpoint in a fresh experiment: step 3 repeats exactly
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copy(exp / "checkpoints" / "0000002.pt", tmp_path / "resumed" / "checkpoints")
    torchrun(train_args(images, tmp_path, "resumed", 3, *extra, overrides=over))
    ref, res = read_metrics(exp / "metrics.jsonl"), read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    assert sorted(res) == [3]
    assert_same_losses(ref, res, [3])
    resumes = [json.loads(line) for line in (tmp_path / "resumed" / "resumes.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumes] == [2] and resumes[0]["checkpoint"].endswith("0000002.pt")
    final = load_checkpoint_file(tmp_path / "resumed" / "checkpoints" / "0000003.pt")
    for key in ("model", "ema"):
        assert all(torch.equal(ckpt[key][k], final[key][k]) for k in ckpt[key]), key


@pytest.mark.slow
def test_sharded_fsdp_checkpoint_resumes_in_one_process(images, tmp_path):
    """--checkpoint-format sharded under FSDP2: each rank writes its shards; the step-2 checkpoint resumes in one
    process (no process group) exactly as the same state in one .pt file does (discriminator, LeCam and scalers from
    meta.pt included), and load_tokenizer reads the folder as one checkpoint."""
    extra = ("--ckpt-every", "2", "--data-parallel", "fsdp", "--ema", "--checkpoint-format", "sharded")
    over = ["loss.params.disc_start=2"]
    torchrun(train_args(images, tmp_path, "sharded", 3, *extra, overrides=over))
    exp = tmp_path / "sharded"
    assert ckpt_steps(exp) == [2, 3]
    step2 = exp / "checkpoints" / "0000002"
    assert {"__0_0.distcp", "__1_0.distcp", "meta.pt"} <= {p.name for p in step2.iterdir()}
    (tmp_path / "one" / "checkpoints").mkdir(parents=True)
    shutil.copytree(step2, tmp_path / "one" / "checkpoints" / "0000002")
    (tmp_path / "full" / "checkpoints").mkdir(parents=True)
    torch.save(load_checkpoint_file(step2), tmp_path / "full" / "checkpoints" / "0000002.pt")  # consolidated
    train_main(train_args(images, tmp_path, "one", 3, *extra, overrides=over))
    train_main(train_args(images, tmp_path, "full", 3, *extra[:-2], overrides=over))
    ref = load_checkpoint_file(tmp_path / "full" / "checkpoints" / "0000003.pt")
    res = load_checkpoint_file(tmp_path / "one" / "checkpoints" / "0000003")
    for key in ("model", "ema", "discriminator"):
        assert all(torch.equal(res[key][k], v) for k, v in ref[key].items()), key
    ref = load_checkpoint_file(exp / "checkpoints" / "0000003")
    model = load_tokenizer(exp / "checkpoints" / "0000003")  # the config comes from the checkpoint, EMA preferred
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ref["ema"].items())


if __name__ == "__main__":  # torchrun entry point for the tests above
    try:
        train_main(sys.argv[1:])
    except TrainingDiverged as exc:
        print(f"training stopped: {exc}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
