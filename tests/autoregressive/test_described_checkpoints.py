"""Checkpoints that describe their model: a GPT written in the trainer's format (format_version 1, and today's
version 0 without it) samples, is probed and evaluated with no model flags; a flag that contradicts the checkpoint is
one clear error naming the flag and both values; files that store no config (released, bare state dicts) keep the
flags and their defaults."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch

from autoregressive import load_gpt
from autoregressive.models.gpt import GPT_models
from autoregressive.sample_c2i import main as sample
from autoregressive.sample_c2i import parse_args as sample_args
from autoregressive.sample_c2i import settle_models
from tokenizer import build_tokenizer
from utils.checkpoint import CheckpointError, save_atomic
from utils.config import ConfigError, to_plain

from testlib import CONFIGS, REPO, child_env

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = CONFIGS / "VQ_tiny32.yaml"  # vocabulary 1024, 64 tokens, 32 px
GPT_CONFIG = {"gpt_model": "GPT-tiny", "vocab_size": 1024, "block_size": 64, "num_classes": 10, "cls_token_num": 1,
              "class_dropout_prob": 0.1, "use_qk_norm": True, "gpt_2d": False}


def gpt_checkpoint(path, model, version: int | None, tokenizer_config: dict | None = None, **train_args):
    """A GPT checkpoint laid out as autoregressive/train_c2i.py writes it (version None: today's files, no
    format_version)."""
    ckpt = {"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "steps": 7,
            "args": {"gpt_model": "GPT-tiny", "num_classes": 10, "qk_norm": True, **train_args},
            "gpt_config": GPT_CONFIG, "scaler": {}, "trainer_state": {"epoch": 0}}
    if version is not None:
        ckpt["format_version"] = version
    if tokenizer_config is not None:
        ckpt["tokenizer_config"] = tokenizer_config
    return save_atomic(ckpt, path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("described")
    torch.manual_seed(3)
    tok = build_tokenizer(TINY)
    config = to_plain(tok.source_config)
    # a tokenizer training checkpoint (tokenizer/train.py's keys; its args an argparse.Namespace)
    save_atomic({"model": tok.state_dict(), "optimizer": {}, "discriminator": {}, "optimizer_disc": {}, "steps": 3,
                 "args": argparse.Namespace(config=str(TINY)), "config": config, "run_settings": {}},
                root / "tok" / "checkpoints" / "0000003.pt")
    save_atomic({"model": tok.state_dict()}, root / "tok_bare.pt")  # a released-style file: weights only
    gpt = GPT_models["GPT-tiny"](**{k: v for k, v in GPT_CONFIG.items() if k != "gpt_model"})
    gpt_checkpoint(root / "gpt" / "checkpoints" / "0000007.pt", gpt, 1, tokenizer_config=config)
    gpt_checkpoint(root / "gpt_v0" / "checkpoints" / "0000007.pt", gpt, None, tok_config=str(TINY))
    save_atomic(gpt.state_dict(), root / "gpt_bare.pt")
    return {"root": root, "gpt": root / "gpt" / "checkpoints" / "0000007.pt",
            "gpt_v0": root / "gpt_v0" / "checkpoints" / "0000007.pt", "gpt_bare": root / "gpt_bare.pt",
            "tok": root / "tok" / "checkpoints" / "0000003.pt", "tok_bare": root / "tok_bare.pt", "model": gpt}


def _sampling(out, *extra) -> list[str]:
    return ["--precision", "none", "--device", "cpu", "--sample-dir", str(out), "--class-idx", "1,2",
            "--qual-num", "2", "--per-proc-batch-size", "2", *extra]


def test_sample_script_needs_only_the_checkpoints(ckpts, tmp_path):
    """The issue's "done means": scripts/sample_c2i.sh --gpt-ckpt ... --vq-ckpt ... and no model flag."""
    proc = subprocess.run(["bash", "scripts/sample_c2i.sh", "--gpt-ckpt", str(ckpts["gpt"]), "--vq-ckpt",
                           str(ckpts["tok"]), *_sampling(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          env=child_env(PYTHON=sys.executable), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    settings = json.loads(next(tmp_path.rglob("sample_settings.json")).read_text())
    assert settings["gpt_model"] == "GPT-tiny" and settings["num_classes"] == 10 and settings["qk_norm"] is True
    assert settings["gpt_config"]["use_qk_norm"] is True and settings["tok_config"]["model"]["model_cls"]
    assert len(list(tmp_path.rglob("class_1_*/*.png"))) == 1


def test_a_contradicting_flag_is_one_clear_error_with_exit_code_2(ckpts, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "autoregressive.sample_c2i", "--gpt-ckpt", str(ckpts["gpt"]),
                           "--vq-ckpt", str(ckpts["tok"]), "--num-classes", "1000", *_sampling(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, env=child_env(), timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[sample_c2i] error:"), proc.stderr
    assert "--num-classes 1000" in lines[0] and "num_classes=10" in lines[0] and str(ckpts["gpt"]) in lines[0]


@pytest.mark.parametrize("flags, named", [
    (["--gpt-model", "GPT-B"], "--gpt-model 'GPT-B' (the checkpoint has gpt_model='GPT-tiny')"),
    (["--gpt-2d"], "--gpt-2d True (the checkpoint has gpt_2d=False)"),
    (["--cls-token-num", "2"], "--cls-token-num 2 (the checkpoint has cls_token_num=1)"),
])
def test_every_gpt_flag_is_checked(ckpts, tmp_path, flags, named):
    args = sample_args(["--gpt-ckpt", str(ckpts["gpt"]), "--vq-ckpt", str(ckpts["tok"]), *flags,
                        *_sampling(tmp_path)])
    with pytest.raises(ConfigError) as info:
        settle_models(args)
    assert named in str(info.value)


def test_two_contradictions_are_named_in_one_error(ckpts, tmp_path):
    args = sample_args(["--gpt-ckpt", str(ckpts["gpt"]), "--vq-ckpt", str(ckpts["tok"]), "--gpt-model", "GPT-B",
                        "--num-classes", "5", *_sampling(tmp_path)])
    with pytest.raises(ConfigError, match=r"these flags contradict it: --gpt-model 'GPT-B' .*; --num-classes 5"):
        settle_models(args)


def test_a_tokenizer_config_of_another_model_is_named(ckpts, tmp_path):
    args = sample_args(["--gpt-ckpt", str(ckpts["gpt"]), "--vq-ckpt", str(ckpts["tok"]), "--tok-config",
                        str(CONFIGS / "VQ_tiny32_2d.yaml"), *_sampling(tmp_path)])
    with pytest.raises(ConfigError, match=r"--tok-config .*VQ_tiny32_2d.yaml builds another model: model_cls: "
                                          r"'VQVitModel2DPlus' \(the checkpoint has 'VQVitModelPlus'\)"):
        settle_models(args)


def test_agreeing_flags_are_accepted_and_version_0_files_sample(ckpts, tmp_path):
    """Today's checkpoints (no format_version) describe their model too; flags that repeat it are fine."""
    folder = sample(["--gpt-ckpt", str(ckpts["gpt_v0"]), "--vq-ckpt", str(ckpts["tok"]), "--gpt-model", "GPT-tiny",
                     "--num-classes", "10", "--qk-norm", "--tok-config", str(TINY), *_sampling(tmp_path)])
    settings = json.loads((folder / "sample_settings.json").read_text())
    assert settings["tok_config"] == str(TINY) and settings["gpt_config"]["num_classes"] == 10


def test_the_tokenizer_config_comes_from_the_gpt_checkpoint_when_the_tokenizer_file_has_none(ckpts, tmp_path):
    # version 1: the tokenizer config stored in the GPT checkpoint; version 0: the YAML its training args name
    for gpt in ("gpt", "gpt_v0"):
        args = sample_args(["--gpt-ckpt", str(ckpts[gpt]), "--vq-ckpt", str(ckpts["tok_bare"]), *_sampling(tmp_path)])
        settle_models(args)
        assert args.gpt_config["vocab_size"] == 1024 and args.num_classes == 10
        assert args.tok_config == (str(TINY) if gpt == "gpt_v0" else to_plain(build_tokenizer(TINY).source_config))
    bare = sample_args(["--gpt-ckpt", str(ckpts["gpt_bare"]), "--vq-ckpt", str(ckpts["tok_bare"]),
                        *_sampling(tmp_path)])
    with pytest.raises(ConfigError, match="--tok-config is needed: the tokenizer checkpoint .*tok_bare.pt' stores "
                                          "no config"):
        settle_models(bare)


def test_files_without_a_config_keep_the_flags_and_their_defaults(ckpts, tmp_path):
    """A bare state dict (as a released file) is built from the flags; without them the old defaults (GPT-B, 1000
    classes) apply, so the strict loader names the mismatch as before."""
    base = ["--gpt-ckpt", str(ckpts["gpt_bare"]), "--vq-ckpt", str(ckpts["tok_bare"]), "--tok-config", str(TINY)]
    with pytest.raises(CheckpointError, match="GPT preset GPT-B"):
        sample([*base, *_sampling(tmp_path / "a")])
    folder = sample([*base, "--gpt-model", "GPT-tiny", "--num-classes", "10", "--qk-norm", *_sampling(tmp_path / "b")])
    assert (folder / "multi_class_grid.png").is_file()
    args = sample_args([*base, *_sampling(tmp_path)])
    settle_models(args)
    assert (args.gpt_model, args.num_classes, args.cls_token_num, args.qk_norm, args.gpt_2d) == (
        "GPT-B", 1000, 1, False, False)


def test_a_gpt_trained_for_another_tokenizer_is_named(ckpts, tmp_path):
    # VQ_tiny32_2d has 256 codes; the GPT was trained on VQ_tiny32's 1024
    args = sample_args(["--gpt-ckpt", str(ckpts["gpt"]), "--vq-ckpt", str(ckpts["tok_bare"]), "--tok-config",
                        str(CONFIGS / "VQ_tiny32_2d.yaml"), *_sampling(tmp_path)])
    with pytest.raises(ConfigError, match="was trained with vocab_size=1024, but the tokenizer .*VQ_tiny32_2d.yaml "
                                          "gives vocab_size=256"):
        settle_models(args)


def test_load_gpt_from_the_checkpoint_alone(ckpts):
    model = ckpts["model"]
    for path in (ckpts["gpt"], ckpts["gpt_v0"], str(ckpts["gpt"])):
        loaded = load_gpt(path)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(),
                                                     strict=True))
        assert loaded.num_classes == 10 and not loaded.training
    assert load_gpt(ckpts["gpt"], vocab_size=1024, token_dropout_p=0.0).block_size == 64  # agreeing / training-only
    with pytest.raises(ConfigError, match=r"vocab_size=512 \(the checkpoint has 1024\)"):
        load_gpt(ckpts["gpt"], vocab_size=512)
    with pytest.raises(ConfigError, match="stores no GPT config .*load_gpt\\('GPT-B'"):
        load_gpt(ckpts["gpt_bare"])
    with pytest.raises(ConfigError, match="is a tokenizer checkpoint"):
        load_gpt(ckpts["tok"])
    # the existing call forms are unchanged: a preset with a described checkpoint, a preset with bare weights
    kwargs = {k: v for k, v in GPT_CONFIG.items() if k != "gpt_model"}
    assert load_gpt("GPT-tiny", ckpts["gpt"], **kwargs).num_classes == 10
    assert load_gpt("GPT-tiny", ckpts["gpt_bare"], **kwargs).num_classes == 10


def test_val_loss_and_probe_settle_their_flags_from_the_checkpoint(ckpts, tmp_path):
    from autoregressive import lin_probe, val_loss

    args = val_loss.parse_args(["--gpt-ckpt", str(ckpts["gpt"]), "--vq-ckpt", str(ckpts["tok"]), "--code-path",
                                str(tmp_path)])
    cfg, info = val_loss.settle_models(args)
    assert cfg["gpt_model"] == "GPT-tiny" and cfg["use_qk_norm"] is True and cfg["num_classes"] == 10
    assert info["num_tokens"] == 64
    bad = val_loss.parse_args(["--gpt-ckpt", str(ckpts["gpt"]), "--code-path", str(tmp_path), "--num-classes", "7"])
    with pytest.raises(ConfigError, match=r"--num-classes 7 \(the checkpoint has num_classes=10\)"):
        val_loss.settle_models(bad)

    common = ["--data-path", str(tmp_path), "--save-path", str(tmp_path), "--vq-ckpt", str(ckpts["tok"]),
              "--gpt-ckpt", str(ckpts["gpt"])]
    args = lin_probe.parse_args(common)
    cfg = lin_probe.settle_models(args)
    assert (cfg["gpt_model"], cfg["num_classes"], cfg["use_qk_norm"]) == ("GPT-tiny", 10, True)
    with pytest.raises(ConfigError, match=r"--gpt-num-classes 1000 \(the checkpoint has num_classes=10\)"):
        lin_probe.settle_models(lin_probe.parse_args([*common, "--gpt-num-classes", "1000"]))
