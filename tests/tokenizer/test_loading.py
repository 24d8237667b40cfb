"""load_tokenizer: local files, the Hub cache offline, safetensors, prefixes, and clear errors on bad input."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from tokenizer import build_tokenizer, load_tokenizer
from utils.checkpoint import CheckpointError, load_checkpoint_file, save_atomic
from utils.config import ConfigError

from testlib import CONFIGS, REPO

TINY = CONFIGS / "VQ_tiny32.yaml"


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(1)
    return build_tokenizer(TINY).eval()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_model):
    import argparse
    path = tmp_path_factory.mktemp("ckpt") / "0000100.pt"
    save_atomic({"model": tiny_model.state_dict(), "steps": 100, "args": argparse.Namespace(lr=1e-4)}, path)
    return path


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_local_checkpoint_with_args_namespace(tiny_model, tiny_ckpt):
    model = load_tokenizer(TINY, tiny_ckpt)
    assert not model.training
    assert _same_weights(model, tiny_model)


def test_ema_entry_preferred_and_prefixes_stripped(tmp_path, tiny_model):
    ema = {f"module.{k}": v + 1 if v.is_floating_point() else v for k, v in tiny_model.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"model": tiny_model.state_dict(), "ema": ema}, path)
    model = load_tokenizer(TINY, path)
    key = "quant_conv.weight"
    assert torch.equal(model.state_dict()[key], tiny_model.state_dict()[key] + 1)


def test_safetensors_and_compiled_prefix(tmp_path, tiny_model):
    path = tmp_path / "weights.safetensors"
    save_file({f"_orig_mod.{k}": v.contiguous() for k, v in tiny_model.state_dict().items()}, str(path))
    assert _same_weights(load_tokenizer(TINY, path), tiny_model)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_tokenizer(TINY, tmp_path / "nope.pt")


def test_truncated_checkpoint_is_reported(tmp_path, tiny_ckpt):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(tiny_ckpt.read_bytes()[: 5000])
    with pytest.raises(CheckpointError, match="truncated.pt.*truncated"):
        load_tokenizer(TINY, bad)


def test_wrong_config_lists_keys_and_config(tiny_ckpt):
    with pytest.raises(CheckpointError) as info:
        load_tokenizer(TINY, tiny_ckpt, overrides=["model.init_args.decoder_size=small"])
    msg = str(info.value)
    assert "shape mismatches" in msg and "s1to2decoder" in msg and "VQ_tiny32.yaml" in msg
    with pytest.raises(CheckpointError, match="missing keys"):
        two_d = {"model_cls": "VQVitModel2DPlus"}
        from utils.config import load_config
        cfg = load_config(TINY)
        for key in ("multi_level_query_init",):
            del cfg.model.init_args[key]
        cfg.model.model_cls = two_d["model_cls"]
        load_tokenizer(cfg, tiny_ckpt)


def test_unexpected_keys_are_listed(tmp_path, tiny_model):
    sd = dict(tiny_model.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pt"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): extra.weight"):
        load_tokenizer(TINY, path)


def test_no_arbitrary_unpickling(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint_file(path)


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match="model.init_args.codebok_size"):
        build_tokenizer(TINY, ["+model.init_args.codebok_size=5"])
    with pytest.raises(ConfigError, match="loss.params.disc_wieght"):
        build_tokenizer({"model": {"model_cls": "VQVitModelPlus", "init_args": {"encoder_size": "tiny",
                         "decoder_size": "tiny"}}, "loss": {"params": {"disc_wieght": 1}}})
    with pytest.raises(ConfigError, match="not in the config"):
        build_tokenizer(TINY, ["model.init_args.nonexistent=1"])


@pytest.mark.parametrize("override,key", [
    ("+loss.params.gamma=10", "loss.params.gamma=10"),
    ("+loss.params.resnet_perceptual=true", "loss.params.resnet_perceptual=True"),
    ("loss.params.codebook_weight=2.0", "loss.params.codebook_weight=2.0"),
    ("+model.causal_settings.dynamic_length_train=true", "model.causal_settings.dynamic_length_train=True"),
    ("+trainer.distill_model_path=/x/dino.pth", "trainer.distill_model_path='/x/dino.pth'"),
    ("+loss.params.image_size=64", "loss.params.image_size=64 differs")])
def test_keys_without_effect_are_rejected_unless_inert(override, key):
    """A key the original accepts but nothing uses is an error at any value that would change something."""
    from tokenizer import read_tokenizer_config

    with pytest.raises(ConfigError, match=re.escape(key)):
        read_tokenizer_config(TINY, [override])
    inert = {"+loss.params.gamma=15", "+loss.params.resnet_perceptual=false", "loss.params.codebook_weight=1.0",
             "+model.causal_settings.dynamic_length_train=false", "+loss.params.image_size=32"}
    read_tokenizer_config(TINY, sorted(inert))  # the values that change nothing are fine


def test_dotted_overrides_apply():
    model = build_tokenizer(TINY, ["model.init_args.rot=false", "model.init_args.codebook_size=512"])
    assert model.quantize.rot is False and model.quantize.embedding.weight.shape == (512, 8)


def test_unsupported_option_is_rejected():
    with pytest.raises(ValueError, match="use_attn"):
        build_tokenizer(TINY, ["model.init_args.use_attn=true"])


def test_released_name_from_offline_hub_cache(tmp_path, tiny_model, tiny_ckpt):
    """A released file name resolves through huggingface_hub's cache with HF_HUB_OFFLINE=1 (no network)."""
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / "models--YuuTennYi--GigaTok"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "VQ_tiny_e1.pt").write_bytes(tiny_ckpt.read_bytes())
    other = cache / "models--someone--other" / "snapshots" / commit
    other.mkdir(parents=True)
    (cache / "models--someone--other" / "refs").mkdir()
    (cache / "models--someone--other" / "refs" / "main").write_text(commit)
    (other / "sub").mkdir()
    (other / "sub" / "w.pt").write_bytes(tiny_ckpt.read_bytes())
    script = textwrap.dedent(f"""
        import torch
        from tokenizer import load_tokenizer
        from utils.checkpoint import CheckpointError
        a = load_tokenizer({str(TINY)!r}, "VQ_tiny_e1.pt")
        b = load_tokenizer({str(TINY)!r}, "hf://someone/other/sub/w.pt")
        assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
        print("SUM", float(a.quant_conv.weight.detach().sum()))
        try:
            load_tokenizer({str(TINY)!r}, "VQ_not_cached.pt")
        except CheckpointError as exc:
            assert "HF_HUB_OFFLINE" in str(exc) and "VQ_not_cached.pt" in str(exc), exc
            print("OFFLINE-ERROR-OK")
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"SUM {float(tiny_model.quant_conv.weight.detach().sum())}" in out.stdout
    assert "OFFLINE-ERROR-OK" in out.stdout


def test_released_tokenizer_by_name(tmp_path, monkeypatch, tiny_ckpt):
    """load_tokenizer("VQ_SS256") means configs/vq/VQ_SS256.yaml with the Hub file VQ_SS256_e100.pt (here a
    stand-in, which then does not fit); a misspelt name lists the nearest released ones."""
    import hashlib

    import huggingface_hub.constants as hf_constants

    repo_dir = tmp_path / "hub" / "models--YuuTennYi--GigaTok"
    commit = hashlib.sha1(b"gigatok-test").hexdigest()
    snap = repo_dir / "snapshots" / commit / "VQ_SS256_e100.pt"
    snap.parent.mkdir(parents=True)
    snap.write_bytes(tiny_ckpt.read_bytes())
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("VQ_SS256", "VQ_SS256_e100.pt"):
        with pytest.raises(CheckpointError, match=r"VQ_SS256_e100\.pt.*configs/vq/VQ_SS256\.yaml"):
            load_tokenizer(name)
    with pytest.raises(ValueError, match="did you mean VQ_SS256"):
        load_tokenizer("VQ_SS265")


# ----- checkpoints that describe their model -------------------------------------------------------------------------

def test_load_tokenizer_from_a_training_checkpoint_alone(tmp_path, tiny_model):
    """tokenizer/train.py's checkpoint stores the YAML as ``config``: no config argument needed, with or without
    format_version (version 0: today's files)."""
    import argparse

    from utils.config import to_plain

    config = to_plain(tiny_model.source_config)
    for version in (None, 1):
        ckpt = {"model": tiny_model.state_dict(), "optimizer": {}, "discriminator": {}, "optimizer_disc": {},
                "steps": 300, "args": argparse.Namespace(lr=1e-4), "config": config, "run_settings": {}}
        if version is not None:
            ckpt["format_version"] = version
        path = save_atomic(ckpt, tmp_path / f"v{version}" / "checkpoints" / "0000300.pt")
        assert _same_weights(load_tokenizer(path), tiny_model)
        assert _same_weights(load_tokenizer(str(path)), tiny_model)
        assert _same_weights(load_tokenizer(None, path), tiny_model)  # config=None: the checkpoint's
        assert _same_weights(load_tokenizer(TINY, path), tiny_model)  # the old call form is unchanged


def test_a_file_without_a_config_still_needs_one(tmp_path, tiny_ckpt, tiny_model):
    with pytest.raises(ConfigError, match="stores no config .*give its YAML"):
        load_tokenizer(tiny_ckpt)
    gpt = save_atomic({"model": {"w": torch.zeros(1)}, "gpt_config": {"gpt_model": "GPT-tiny"}}, tmp_path / "g.pt")
    with pytest.raises(ConfigError, match="is a GPT checkpoint"):
        load_tokenizer(gpt)


def test_settle_tokenizer_config(tmp_path, tiny_model, tiny_ckpt):
    """The entry points' --tok-config: the checkpoint's stored config (a given YAML must build the same model), the
    given YAML for a file without one, the released YAML by the file's name (as before), else an error."""
    from tokenizer import config_path, settle_tokenizer_config
    from utils.config import to_plain

    stored = to_plain(tiny_model.source_config)
    described = save_atomic({"model": tiny_model.state_dict(), "config": stored}, tmp_path / "described.pt")
    assert settle_tokenizer_config(described) == stored
    assert settle_tokenizer_config(described, str(TINY)) == str(TINY)  # agrees: the given file is kept
    with pytest.raises(ConfigError, match=r"--model-config .*VQ_tiny32_2d.yaml builds another model: model_cls"):
        settle_tokenizer_config(described, str(CONFIGS / "VQ_tiny32_2d.yaml"), flag="--model-config")
    assert settle_tokenizer_config(tiny_ckpt, str(TINY)) == str(TINY)
    assert settle_tokenizer_config("VQ_SS256_e100.pt") == str(config_path("VQ_SS256"))  # not read: the registry
    with pytest.raises(ConfigError, match="--tok-config is needed"):
        settle_tokenizer_config(tiny_ckpt)
