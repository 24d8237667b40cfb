"""load_gpt: local files, an offline Hub cache, configs, and clear errors for bad checkpoints."""
from __future__ import annotations

import argparse
import hashlib

import pytest
import torch

from autoregressive import build_gpt, load_gpt
from utils.checkpoint import CheckpointError

from testlib import TINY_GPT, tiny_gpt

pytestmark = pytest.mark.usefixtures("single_thread")


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def trained(tmp_path):
    """A tiny model saved like the original trainer does: {model, optimizer, steps, args}."""
    model = tiny_gpt(seed=3)
    path = tmp_path / "0001000.pt"
    torch.save({"model": model.state_dict(), "optimizer": {}, "steps": 1000,
                "args": argparse.Namespace(gpt_model="GPT-tiny")}, path)
    return model, path


def test_load_local_file(trained):
    model, path = trained
    loaded = load_gpt("GPT-tiny", path, device="cpu", **TINY_GPT)
    assert same_weights(loaded, model) and not loaded.training
    out = load_gpt("GPT-tiny", str(path), dtype=torch.bfloat16, **TINY_GPT)
    assert out.tok_embeddings.weight.dtype == torch.bfloat16


def test_entries_and_prefixes(tmp_path):
    model, other = tiny_gpt(seed=1), tiny_gpt(seed=2)
    # "model" wins over "ema", as in the original samplers.
    path = tmp_path / "both.pt"
    torch.save({"ema": other.state_dict(), "model": model.state_dict()}, path)
    assert same_weights(load_gpt("GPT-tiny", path, **TINY_GPT), model)
    # DeepSpeed "module" entry with DDP and torch.compile prefixes.
    path = tmp_path / "ds.pt"
    torch.save({"module": {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}}, path)
    assert same_weights(load_gpt("GPT-tiny", path, **TINY_GPT), model)
    # A bare state dict (e.g. an FSDP export).
    path = tmp_path / "bare.pt"
    torch.save(model.state_dict(), path)
    assert same_weights(load_gpt("GPT-tiny", path, **TINY_GPT), model)


def test_config_dict_and_yaml(tmp_path, trained):
    model, path = trained
    cfg = {"gpt_model": "GPT-tiny", **TINY_GPT}
    assert same_weights(load_gpt(cfg, path), model)
    yaml_path = tmp_path / "gpt.yaml"
    yaml_path.write_text("gpt:\n  gpt_model: GPT-tiny\n  vocab_size: 64\n  block_size: 16\n  num_classes: 10\n"
                         f"  gpt_ckpt: {path}\n")
    assert same_weights(load_gpt(yaml_path), model)
    assert build_gpt(cfg).block_size == 16
    with pytest.raises(ValueError, match="unknown config key 'gpt.vocab'"):
        load_gpt({"gpt_model": "GPT-tiny", "vocab": 3})
    with pytest.raises(ValueError, match="not a preset"):
        load_gpt({"gpt_model": "GPT-Q"})
    with pytest.raises(ValueError, match="unknown GPT model 'GPT-Q'"):
        load_gpt("GPT-Q")


def test_missing_file():
    with pytest.raises(CheckpointError, match="does not exist"):
        load_gpt("GPT-tiny", "/nonexistent/dir/gpt.pt", **TINY_GPT)


def test_wrong_model_for_checkpoint(trained):
    _, path = trained
    with pytest.raises(CheckpointError, match=r"shape mismatches.*tok_embeddings.weight") as err:
        load_gpt("GPT-tiny", path, vocab_size=128, block_size=16, num_classes=10)
    assert "GPT-tiny" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(CheckpointError, match=r"missing keys.*q_norm"):
        load_gpt("GPT-tiny", path, use_qk_norm=True, **TINY_GPT)


def test_truncated_file(tmp_path, trained):
    _, path = trained
    data = path.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_gpt("GPT-tiny", bad, **TINY_GPT)


def test_load_from_offline_hub_cache(tmp_path, monkeypatch, trained):
    """A released file name resolves through a pre-filled Hugging Face cache with HF_HUB_OFFLINE=1."""
    import huggingface_hub.constants as hf_constants

    model, path = trained
    name = "GPT_tiny_test.pt"
    repo_dir = tmp_path / "hub" / "models--YuuTennYi--GigaTok"
    commit = hashlib.sha1(b"gigatok-test").hexdigest()
    data = path.read_bytes()
    blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    snap = repo_dir / "snapshots" / commit / name
    snap.parent.mkdir(parents=True)
    snap.symlink_to(blob)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    assert same_weights(load_gpt("GPT-tiny", name, **TINY_GPT), model)
    assert same_weights(load_gpt("GPT-tiny", f"hf://YuuTennYi/GigaTok/{name}", **TINY_GPT), model)
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        load_gpt("GPT-tiny", "GPT_B256_e300_VQ_XLXXL.pt", **TINY_GPT)


def test_released_gpts_by_name(tmp_path, monkeypatch, trained):
    """load_gpt("GPT-B_VQ_XLXXL") (or its file stem) means preset GPT-B with the released sizes and the Hub file
    GPT_B256_e300_VQ_XLXXL.pt; a misspelt name lists the nearest known ones."""
    import huggingface_hub.constants as hf_constants

    _, path = trained
    repo_dir = tmp_path / "hub" / "models--YuuTennYi--GigaTok"
    commit = hashlib.sha1(b"gigatok-test").hexdigest()
    snap = repo_dir / "snapshots" / commit / "GPT_B256_e300_VQ_XLXXL.pt"
    snap.parent.mkdir(parents=True)
    snap.write_bytes(path.read_bytes())  # a stand-in file: tiny weights under the released name
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("GPT-B_VQ_XLXXL", "GPT_B256_e300_VQ_XLXXL", "GPT_B256_e300_VQ_XLXXL.pt"):
        # resolved to GPT-B and the released file (whose stand-in then does not fit GPT-B)
        with pytest.raises(CheckpointError, match=r"GPT_B256_e300_VQ_XLXXL\.pt.*GPT preset GPT-B with .*16384"):
            load_gpt(name)
    with pytest.raises(ValueError, match="did you mean GPT-B_VQ_XLXXL"):
        load_gpt("GPT-B_VQ_XLXL")
