"""save_pretrained / push_to_hub / convert_checkpoint: safetensors folders that the loaders read back bit-exactly, a
Hub upload against a local stand-in (no network), and the one way to read a pickling checkpoint (--trust-pickle)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoregressive import load_gpt
from autoregressive.convert_checkpoint import main as convert
from tokenizer import build_tokenizer, load_tokenizer
from tokenizer.models.vq_model import VQVitModelPlus
from utils.checkpoint import CheckpointError
from utils.config import ConfigError

from testlib import CONFIGS, REPO, TINY_GPT, child_env, stand_in_hub, tiny_gpt

pytestmark = pytest.mark.usefixtures("single_thread")
TINY = CONFIGS / "VQ_tiny32.yaml"


def same(a: torch.nn.Module | dict, b: torch.nn.Module | dict) -> bool:
    sa = a if isinstance(a, dict) else a.state_dict()
    sb = b if isinstance(b, dict) else b.state_dict()
    return list(sa) == list(sb) and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(4)
    return build_tokenizer(TINY).eval()


def test_tokenizer_save_pretrained_round_trip(tmp_path, tok):
    folder = tok.save_pretrained(tmp_path / "tok", metrics={"psnr": 21.5, "rfid": 3.25, "per_image": [1, 2]})
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.yaml", "README.md", "metrics.json"}
    assert same(load_tokenizer(folder), tok)
    assert same(load_tokenizer(TINY, folder), tok)  # the folder as a checkpoint argument
    card = (folder / "README.md").read_text()
    for part in ("license: mit", "VQVitModelPlus", "## Metrics", "| psnr | 21.5 |", "## Training settings",
                 "| lr |", "## Licence", "load_tokenizer"):
        assert part in card, part
    # a model built from its arguments alone (no config) saves its arguments
    bare = VQVitModelPlus(tok.args)
    bare.load_state_dict(tok.state_dict())
    assert same(load_tokenizer(bare.save_pretrained(tmp_path / "bare")), tok)


def test_gpt_save_pretrained_round_trip(tmp_path):
    for overrides in ({}, {"gpt_2d": True, "use_qk_norm": True}):
        model = tiny_gpt(seed=5, **overrides)
        folder = model.save_pretrained(tmp_path / f"gpt{len(overrides)}", training={"lr": 1e-4, "epochs": 3})
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["gpt_model"] == "GPT-tiny" and cfg["vocab_size"] == TINY_GPT["vocab_size"]
        loaded = load_gpt(folder)
        assert same(loaded, model) and loaded.config == model.config and not loaded.training
        assert "| epochs | 3 |" in (folder / "README.md").read_text()


def test_wrong_folder_kind_is_named(tmp_path, tok):
    folder = tok.save_pretrained(tmp_path / "tok")
    with pytest.raises(CheckpointError, match="config.json missing.*tokenizer config"):
        load_gpt(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_tokenizer(TINY, tmp_path / "empty")


def test_push_to_hub_and_load_back(tmp_path, monkeypatch, tok):
    calls = stand_in_hub(monkeypatch, tmp_path / "hub")
    url = tok.push_to_hub("someone/tiny-tok", private=True, token="hf_x", metrics={"psnr": 20.0})
    assert url.startswith("https://huggingface.co/someone/tiny-tok/commit/")
    assert ("create_repo", "someone/tiny-tok", True, True) in calls and ("init", "hf_x") in calls
    assert ("upload_folder", "someone/tiny-tok",
            ["README.md", "config.yaml", "metrics.json", "model.safetensors"]) in calls
    assert same(load_tokenizer("hf://someone/tiny-tok"), tok)
    gpt = tiny_gpt(seed=6)
    gpt.push_to_hub("someone/tiny-gpt")
    assert same(load_gpt("hf://someone/tiny-gpt"), gpt)
    card = (tmp_path / "hub" / "models--someone--tiny-gpt").rglob("README.md").__next__().read_text()
    assert 'load_gpt("hf://someone/tiny-gpt")' in card
    with pytest.raises(CheckpointError, match="hf://someone/missing.*HF_HUB_OFFLINE"):
        load_tokenizer("hf://someone/missing")


def test_convert_chooses_the_loaders_entry(tmp_path, tok):
    """Tokenizer: ema over model; GPT: model over ema; prefixes stripped; the result loads as the original does."""
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in tok.state_dict().items()}
    path = tmp_path / "0000010.pt"
    torch.save({"model": tok.state_dict(), "ema": {f"module.{k}": v for k, v in ema.items()},
                "config": tok.source_config, "steps": 10, "args": argparse.Namespace(lr=1e-3)}, path)
    out = convert([str(path), str(tmp_path / "tok"), "--metrics", str(_metrics(tmp_path))])
    assert same(load_tokenizer(out), load_tokenizer(TINY, path)) and same(load_tokenizer(out).state_dict(), ema)
    assert "| steps | 10 |" in (out / "README.md").read_text() and (out / "metrics.json").is_file()

    gpt, other = tiny_gpt(seed=1), tiny_gpt(seed=2)
    path = tmp_path / "gpt.pt"
    torch.save({"ema": other.state_dict(), "model": {f"_orig_mod.{k}": v for k, v in gpt.state_dict().items()},
                "gpt_config": {"gpt_model": "GPT-tiny", **TINY_GPT}}, path)
    out = convert([str(path), str(tmp_path / "gpt")])
    assert same(load_gpt(out), gpt) and same(load_gpt(out), load_gpt("GPT-tiny", path, **TINY_GPT))
    # no recorded config: --config names it
    bare = tmp_path / "bare.pt"
    torch.save(gpt.state_dict(), bare)
    with pytest.raises(ConfigError, match="pass --config"):
        convert([str(bare), str(tmp_path / "x")])
    cfg = tmp_path / "gpt.yaml"
    cfg.write_text("gpt_model: GPT-tiny\nvocab_size: 64\nblock_size: 16\nnum_classes: 10\n")
    assert same(load_gpt(convert([str(bare), str(tmp_path / "bare"), "--config", str(cfg)])), gpt)
    with pytest.raises(CheckpointError, match="does not match.*GPT-B"):
        convert([str(bare), str(tmp_path / "y"), "--config", "GPT-B"])
    with pytest.raises(ConfigError, match="as a tokenizer checkpoint"):
        convert([str(path), str(tmp_path / "z"), "--kind", "tokenizer"])


def _metrics(tmp_path: Path) -> Path:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"psnr": 19.0}))
    return path


class Pickled:  # module level so pickle can find it
    pass


def test_pickling_checkpoint_needs_trust_pickle(tmp_path):
    """The safe loader refuses, naming the type and the command; --trust-pickle (and only it) converts the file."""
    gpt = tiny_gpt(seed=7)
    path = tmp_path / "pickled.pt"
    torch.save({"model": gpt.state_dict(), "extra": Pickled(), "gpt_config": {"gpt_model": "GPT-tiny", **TINY_GPT}},
               path)
    message = (r"pickles the Python type .*Pickled.*python -m autoregressive.convert_checkpoint .*pickled.pt.* "
               r"--trust-pickle")
    with pytest.raises(CheckpointError, match=message):
        load_gpt("GPT-tiny", path, **TINY_GPT)
    with pytest.raises(CheckpointError, match=message):
        convert([str(path), str(tmp_path / "out")])
    assert same(load_gpt(convert([str(path), str(tmp_path / "out"), "--trust-pickle"])), gpt)


def test_convert_command_line(tmp_path, tok):
    path = tmp_path / "tok.pt"
    torch.save({"model": tok.state_dict()}, path)
    proc = subprocess.run([sys.executable, "-m", "autoregressive.convert_checkpoint", str(path), str(tmp_path / "out"),
                           "--config", str(TINY)], cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "tokenizer weights from 'model'" in proc.stderr
    assert same(load_tokenizer(tmp_path / "out"), tok)
    proc = subprocess.run([sys.executable, "-m", "autoregressive.convert_checkpoint", str(path), str(tmp_path / "o2")],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("[convert_checkpoint] error:")
