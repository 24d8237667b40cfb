"""AR training (autoregressive.train_c2i): a tiny GPT learns the codes of a tiny tokenizer, the WSD schedule and its
folder layout follow the original, resume is exact after SIGKILL, and DDP / FSDP2 runs (2 CPU processes, gloo)
write checkpoints that load with ``load_gpt``.

Data: small PIL images (4 classes, class-specific colours and shapes), codes extracted with
``autoregressive.extract_codes`` from a randomly initialised ``VQ_tiny32`` tokenizer (1024 codes, 64 tokens).
"""
from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from autoregressive import load_gpt
from autoregressive.data import TrainCodeDataset
from autoregressive.extract_codes import code_dirs
from autoregressive.extract_codes import main as extract
from autoregressive.train_c2i import build_parser, lr_for_step
from autoregressive.train_c2i import main as train_main
from tokenizer import build_tokenizer
from utils.checkpoint import load_checkpoint_file, prune_step_checkpoints, save_atomic
from utils.config import ConfigError
from utils.logging import read_metrics
from utils.lr import LRSchedule
from utils.train_data import StepBatchSampler
from utils.training import optimizer_state_by_name, param_groups, resume_candidates

from testlib import CONFIGS, REPO, child_env, make_class_images, threads, torchrun

TINY_TOK = CONFIGS / "VQ_tiny32.yaml"
N_CLASSES = 4
LN_VOCAB = math.log(1024)


# ---------------------------------------------------------------------------------------------------------------
# data shared with test_val_loss.py

def make_ar_data(root: Path, train_per_class: int = 8, val_per_class: int = 3) -> dict:
    """Images, a tiny tokenizer checkpoint and extracted codes (centre crop + mirror) for train and val."""
    torch.manual_seed(5)
    tok = build_tokenizer(TINY_TOK).eval()
    tok_ckpt = save_atomic({"model": tok.state_dict()}, root / "tok.pt")
    out = {"tok_ckpt": tok_ckpt, "tokenizer": tok}
    for split, n, seed in (("train", train_per_class, 0), ("val", val_per_class, 1)):
        images = make_class_images(root / f"{split}_images", n, seed)
        codes = root / f"{split}_codes"
        extract(["--data-path", str(images), "--code-path", str(codes), "--image-size", "32", "--model-config",
                 str(TINY_TOK), "--vq-ckpt", str(tok_ckpt), "--device", "cpu", "--num-workers", "0",
                 "--batch-size", "16"])
        out[f"{split}_images"], out[f"{split}_codes"] = images, codes
    return out


@pytest.fixture(scope="module")
def ar_data(tmp_path_factory):
    with threads(1):
        yield make_ar_data(tmp_path_factory.mktemp("ar_data"))


def train_args(data: dict, save: Path, name: str, iterations: int, *extra: str) -> list[str]:
    return ["--tok-config", str(TINY_TOK), "--dataset", "imagenet_code", "--code-path", str(data["train_codes"]),
            "--gpt-model", "GPT-tiny", "--num-classes", str(N_CLASSES), "--save-path", str(save),
            "--sub-exp-dir", name, "--iterations", str(iterations), "--global-batch-size", "8", "--lr", "3e-3",
            "--num-workers", "0", "--device", "cpu", "--log-every", "1", "--no-compile", *extra]


def losses(folder: Path) -> dict[int, float]:
    """Per-step training losses from every metrics.jsonl of a run (constant and cool-down folders)."""
    out = {}
    for path in sorted(folder.rglob("metrics.jsonl")):
        out.update({s: r for s, r in read_metrics(path).items()})
    return out


# ---------------------------------------------------------------------------------------------------------------
# pure functions: schedule, timing, resume rule, pruning, optimiser groups, sampler

# the original's wsd_lr (tokenizer_image/scheduler.py) evaluated for T = 1.5M, warmup 5000, base 1e-4
# (as printed there, so compared at the printed number of significant digits)
WSD_TABLE = [(0, "1.0e-6"), (2500, "5.05e-5"), (5000, "1e-4"), (1_200_000, "1e-4"), (1_275_000, "5e-5"),
             (1_350_000, "2.93e-5"), (1_499_999, "1.7e-10")]


def test_wsd_matches_the_spec_table_and_every_phase_boundary():
    sch = LRSchedule("wsd", 1e-4, 1_500_000, warmup=5000, fract_decay=0.2)
    for step, printed in WSD_TABLE:
        digits = len(printed.split("e")[0].replace(".", "").lstrip("0")) or 1
        assert float(f"{sch(step):.{digits}g}") == pytest.approx(float(printed), rel=1e-12), (step, sch(step))
    base, w, hold, T = 1e-4, 5000, 1_200_000, 1_500_000
    assert sch.wsd_decay_start == hold
    assert sch(w - 1) == pytest.approx(base * ((w - 1) / w + (1 / w) / 100)) and sch(w - 1) < base
    assert sch(w) == base and sch(hold - 1) == base and sch(hold) == base  # decay factor 1 - sqrt(0) at hold
    assert sch(hold + 1) == pytest.approx(base * (1 - math.sqrt(1 / 300_000)))
    assert sch(T - 1) == pytest.approx(base * (1 - math.sqrt((T - 1 - hold) / 300_000)))
    assert sch(T) == 0.0 and sch(T + 10) == 0.0
    # XXL recipe: batch 512 -> T = 750k, warmup 200; hold at 600k
    assert LRSchedule("wsd", 1e-4, 750_000, warmup=200, fract_decay=0.2).wsd_decay_start == 600_000


def test_lr_timing_fixed_and_original():
    wsd = LRSchedule("wsd", 1e-4, 100, warmup=10, fract_decay=0.2)
    assert [lr_for_step(wsd, s) for s in (0, 9, 10, 80, 99)] == [wsd(0), wsd(9), 1e-4, 1e-4, wsd(99)]
    # the original: update 0 at the constructor LR (base), update s at f(s - 1)
    assert lr_for_step(wsd, 0, True) == 1e-4 and lr_for_step(wsd, 1, True) == wsd(0) == pytest.approx(1e-6)
    assert lr_for_step(wsd, 81, True) == wsd(80) == 1e-4 and lr_for_step(wsd, 82, True) == wsd(81) < 1e-4
    const = LRSchedule("const", 1e-4, 100, warmup=10)
    assert lr_for_step(const, 0) == pytest.approx(1e-6) and lr_for_step(const, 10) == 1e-4  # fixed: warmup works
    assert {lr_for_step(const, s, True) for s in range(20)} == {1e-4}  # original: never called
    cos = LRSchedule("cosine_v2", 1e-4, 100, warmup=10, end_lr=1e-5)
    assert lr_for_step(cos, 55) == pytest.approx((1e-4 + 1e-5) / 2) and lr_for_step(cos, 100) == 1e-5


def _touch(folder: Path, *steps: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in steps:
        (folder / f"{s:07d}.pt").write_bytes(b"x")
    (folder / ".0000099.pt.abc.tmp").write_bytes(b"partial")  # an interrupted atomic write never counts


def find_resume_checkpoint(const: Path, cd: Path | None, hold: int | None) -> Path | None:
    return (resume_candidates(const, cd, hold) or [None])[0]


def test_resume_rule_of_the_original(tmp_path):
    const, cd = tmp_path / "checkpoints", tmp_path / "cd_records" / "cd_fract_0.2_to_0000100" / "checkpoints"
    assert find_resume_checkpoint(const, cd, 80) is None
    _touch(const, 20, 40, 60)
    assert find_resume_checkpoint(const, cd, 80).name == "0000060.pt"  # constant phase: newest
    assert find_resume_checkpoint(const, None, None).name == "0000060.pt"  # non-WSD: newest
    _touch(const, 80, 90)  # a longer constant run exists: branch the cool-down from the hold step
    assert find_resume_checkpoint(const, cd, 80).name == "0000080.pt"
    assert find_resume_checkpoint(const, cd, 85).name == "0000080.pt"  # largest <= hold
    _touch(cd, 85, 95)
    assert find_resume_checkpoint(const, cd, 80).name == "0000095.pt"  # cool-down in progress


def test_checkpoint_pruning_rule(tmp_path):
    _touch(tmp_path, *range(10, 200, 10))
    prune_step_checkpoints(tmp_path, milestone_step=50, milestone_start=50, max_milestone_num=2,
                           max_none_milestone_num=3)
    kept = sorted(int(p.stem) for p in tmp_path.glob("*.pt"))
    # milestones 50, 100, 150: newest 2 kept; others older than the last milestone (150) deleted; newest 3 others
    assert kept == [100, 150, 170, 180, 190]


def test_weight_decay_groups_and_original_optimizer_state():
    from autoregressive.models.gpt import GPT_models
    model = GPT_models["GPT-tiny"](vocab_size=32, block_size=8, num_classes=3)
    decay, plain = param_groups(model, 0.05, lambda _, param: param.dim() < 2)
    name_of = {id(p): n for n, p in model.named_parameters()}
    names = [[name_of[id(p)] for p in group["params"]] for group in (decay, plain)]
    assert decay["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert {"positional_embedding", "cls_embedding.embedding_table.weight", "tok_embeddings.weight",
            "output.weight"} <= set(names[0])
    assert all("norm" in n for n in names[1]) and len(names[1]) == 2 * 2 + 1
    # an id-keyed optimizer state (the original's DDP checkpoints) maps to parameter names
    opt = torch.optim.AdamW(param_groups(model, 0.05, lambda _, param: param.dim() < 2), lr=1e-3)
    model(torch.zeros(2, 7, dtype=torch.long), torch.zeros(2, dtype=torch.long),
          targets=torch.zeros(2, 8, dtype=torch.long))[1].backward()
    opt.step()
    named = optimizer_state_by_name(opt.state_dict(), opt, model)
    params = dict(model.named_parameters())
    assert set(named["state"]) == set(params)
    assert all(named["state"][n]["exp_avg"].shape == params[n].shape for n in params)


def test_sampler_is_a_function_of_the_step_and_world_size_independent():
    one = StepBatchSampler(50, 8, rank=0, world_size=1, seed=3)
    two = [StepBatchSampler(50, 8, rank=r, world_size=2, seed=3) for r in range(2)]
    assert one.steps_per_epoch == 6
    for step in (0, 5, 6, 13):
        glob = one.batch_for_step(step)
        assert glob == two[0].batch_for_step(step) + two[1].batch_for_step(step)
        assert {e for _, e in glob} == {step // 6}
    epoch0 = [i for s in range(6) for i, _ in one.batch_for_step(s)]
    assert len(set(epoch0)) == 48  # no repeats inside an epoch
    resumed = StepBatchSampler(50, 8, seed=3, start_step=4, end_step=9)
    assert list(resumed) == [one.batch_for_step(s) for s in range(4, 9)] and len(resumed) == 5
    # gradient accumulation: each step's batch in consecutive micro-batches, the same samples per step
    micro = StepBatchSampler(50, 8, rank=1, world_size=2, seed=3, start_step=4, end_step=6, micro_batches=2)
    assert list(micro) == [two[1].batch_for_step(s)[k:k + 2] for s in (4, 5) for k in (0, 2)] and len(micro) == 4


def test_code_views_are_seeded_per_sample(ar_data):
    codes_dir, labels_dir = code_dirs(ar_data["train_codes"], "imagenet", 32)
    ds = TrainCodeDataset(codes_dir, labels_dir, seed=0)
    picks = {e: [ds[(i, e)][0] for i in range(6)] for e in range(6)}
    again = [ds[(i, 3)][0] for i in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(picks[3], again, strict=True))
    stored = np.load(codes_dir / "0.npy")
    views = {int(np.flatnonzero((stored == picks[e][0].numpy()).all(1))[0]) for e in range(6)}
    assert views == {0, 1}  # both stored views (crop and mirror) get used


# ---------------------------------------------------------------------------------------------------------------
# training runs (single process, in-process)

def test_tiny_gpt_lowers_training_and_validation_loss(ar_data, tmp_path, single_thread):
    from autoregressive.val_loss import main as val_main
    result = train_main(train_args(ar_data, tmp_path, "learn", 40, "--lr-scheduler", "const", "--warmup", "4",
                                   "--ckpt-every", "10", "--mixed-precision", "none", "--global-batch-size", "16"))
    run = tmp_path / "learn"
    assert result["steps"] == 40 and sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == \
        ["0000010.pt", "0000020.pt", "0000030.pt", "0000040.pt"]
    assert not (run / "cd_records").exists()  # const: no cool-down folders (the original crashed here)
    m = losses(run)
    first = np.mean([m[s]["train_loss"] for s in range(1, 5)])
    last = np.mean([m[s]["train_loss"] for s in (37, 38, 39, 40)])
    assert first > 6.5 and last < first - 2.0, (first, last)

    def val(step):
        return val_main(["--gpt-ckpt", str(run / "checkpoints" / f"{step:07d}.pt"), "--tok-config", str(TINY_TOK),
                         "--code-path", str(ar_data["val_codes"]), "--device", "cpu", "--num-workers", "0",
                         "--precision", "none", "--per-proc-batch-size", "5"])["val_loss"]
    early, final = val(10), val(40)
    assert final < early < LN_VOCAB - 0.2, (early, final)
    records = json.loads((run / "val_results.json").read_text())
    assert [r["gpt_iter"] for r in records] == ["0000010", "0000040"]

    # the checkpoint: {model, optimizer, steps, args} + what load_gpt needs; safe to load with weights_only
    path = run / "checkpoints" / "0000040.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "steps", "args"} <= set(ckpt) and ckpt["steps"] == 40 and "ema" not in ckpt
    assert ckpt["args"]["gpt_model"] == "GPT-tiny" and ckpt["gpt_config"]["vocab_size"] == 1024
    assert ckpt["format_version"] == 1 and ckpt["tokenizer_config"]["model"]["model_cls"] == "VQVitModelPlus"
    model = load_gpt(ckpt["gpt_config"], path)
    assert model.tok_embeddings.weight.shape == (1024, 64) and model.positional_embedding.shape == (65, 64)
    same = load_gpt("GPT-tiny", path, vocab_size=1024, block_size=64, num_classes=N_CLASSES)
    assert torch.equal(same.output.weight, model.output.weight)


def test_online_tokenisation_mode(ar_data, tmp_path, single_thread):
    """--dataset imagenet: random crop + flip, tokenised per step; cosine schedule, accumulation, bf16, EMA,
    activation checkpointing."""
    args = train_args(ar_data, tmp_path, "images", 3, "--lr-scheduler", "cosine", "--warmup", "1",
                      "--gradient-accumulation-steps", "2", "--mixed-precision", "bf16", "--ema", "--grad-ckpt")
    args[args.index("imagenet_code")] = "imagenet"
    args += ["--data-path", str(ar_data["train_images"]), "--vq-ckpt", str(ar_data["tok_ckpt"])]
    train_main(args)
    run = tmp_path / "images"
    m = losses(run)
    assert sorted(m) == [1, 2, 3] and all(math.isfinite(r["train_loss"]) for r in m.values())
    sch = LRSchedule("cosine_v2", 3e-3, 3, warmup=1, end_lr=1e-5)
    assert [m[s]["lr"] for s in (1, 2, 3)] == pytest.approx([sch(0), sch(1), sch(2)])
    assert (run / "VQ_tiny32.yaml").is_file() and (run / "vq_ckpt.txt").read_text() == str(ar_data["tok_ckpt"])
    ckpt = load_checkpoint_file(run / "checkpoints" / "0000003.pt")
    assert set(ckpt["ema"]) == set(ckpt["model"])


# ---------------------------------------------------------------------------------------------------------------
# SIGKILL after a checkpoint, then auto-resume: the same per-step losses; WSD layout and LR at every step

@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted_wsd_run(ar_data, tmp_path, single_thread):
    T, hold = 24, 18  # fract 0.25
    extra = ("--lr-scheduler", "wsd", "--warmup", "3", "--fract-decay", "0.25", "--ckpt-every", "6", "--ema",
             "--mixed-precision", "bf16", "--max-grad-norm", "0.5")
    train_main(train_args(ar_data, tmp_path, "ref", T, *extra))
    ref = losses(tmp_path / "ref")
    cd = Path("cd_records") / "cd_fract_0.25_to_0000024" / "checkpoints"
    assert sorted(p.name for p in (tmp_path / "ref" / "checkpoints").glob("*.pt")) == \
        ["0000006.pt", "0000012.pt", "0000018.pt"]  # the checkpoint at exactly the hold step stays here
    assert sorted(p.name for p in (tmp_path / "ref" / cd).glob("*.pt")) == ["0000024.pt"]
    assert (tmp_path / "ref" / cd.parent / "log.txt").is_file()  # logs follow the switch
    sch = LRSchedule("wsd", 3e-3, T, warmup=3, fract_decay=0.25)
    assert [ref[s]["lr"] for s in range(1, T + 1)] == pytest.approx([sch(s) for s in range(T)], rel=1e-12)
    assert ref[hold]["lr"] == 3e-3 and ref[hold + 2]["lr"] < 3e-3

    # the same run in a subprocess (with DataLoader workers), killed right after its first checkpoint
    args = train_args(ar_data, tmp_path, "killed", T, *extra)
    args[args.index("--num-workers") + 1] = "2"
    proc = subprocess.Popen([sys.executable, "-m", "autoregressive.train_c2i", *args], cwd=REPO, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "killed" / "checkpoints" / "0000006.pt"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / cd / "0000024.pt").exists()
    train_main(args)  # auto-resume from the newest checkpoint
    log = (tmp_path / "killed" / "log.txt").read_text()
    assert "Resume training from checkpoint" in log
    assert [json.loads(r)["step"] for r in (tmp_path / "killed" / "resumes.jsonl").read_text().splitlines()] == [6]
    assert (tmp_path / "killed" / "curves.png").is_file() and (tmp_path / "killed" / cd.parent / "curves.png").is_file()
    res = losses(tmp_path / "killed")
    assert sorted(res) == list(range(1, T + 1))
    assert [res[s]["train_loss"] for s in range(1, T + 1)] == [ref[s]["train_loss"] for s in range(1, T + 1)]
    a = load_checkpoint_file(tmp_path / "ref" / cd / "0000024.pt")
    b = load_checkpoint_file(tmp_path / "killed" / cd / "0000024.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])


# ---------------------------------------------------------------------------------------------------------------
# torchrun: DDP, then FSDP2 resuming the DDP checkpoint (2 CPU processes, gloo)

@pytest.mark.slow
def test_ddp_then_fsdp_two_processes(ar_data, tmp_path):
    extra = ("--ckpt-every", "3", "--ema", "--mixed-precision", "none", "--lr-scheduler", "const")
    torchrun("autoregressive.train_c2i", train_args(ar_data, tmp_path, "ddp", 6, *extra))
    ddp_dir = tmp_path / "ddp" / "checkpoints"
    assert sorted(p.name for p in ddp_dir.glob("*.pt")) == ["0000003.pt", "0000006.pt"]
    ddp = load_checkpoint_file(ddp_dir / "0000006.pt")
    assert ddp["trainer_state"]["world_size"] == 2 and set(ddp["ema"]) == set(ddp["model"])
    model = load_gpt(ddp["gpt_config"], ddp_dir / "0000006.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ddp["model"].items())

    # FSDP2 (sdp) continues the DDP run from step 3: same data, same per-rank random streams, so the losses of
    # steps 4-6 and the final weights agree with the DDP run up to float reduction order
    (tmp_path / "fsdp" / "checkpoints").mkdir(parents=True)
    (tmp_path / "fsdp" / "checkpoints" / "0000003.pt").write_bytes((ddp_dir / "0000003.pt").read_bytes())
    torchrun("autoregressive.train_c2i", train_args(ar_data, tmp_path, "fsdp", 6, *extra, "--data-parallel", "sdp"))
    fsdp_path = tmp_path / "fsdp" / "checkpoints" / "0000006.pt"
    fsdp = load_checkpoint_file(fsdp_path)
    assert fsdp["args"]["data_parallel"] == "sdp"
    assert set(fsdp["model"]) == set(ddp["model"]) and set(fsdp["ema"]) == set(ddp["model"])
    assert all(isinstance(k, str) for k in fsdp["optimizer"]["state"])
    loaded = load_gpt(fsdp["gpt_config"], fsdp_path)
    for k, v in ddp["model"].items():
        torch.testing.assert_close(fsdp["model"][k], v, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fsdp["ema"][k], ddp["ema"][k], rtol=1e-4, atol=1e-5)
        assert torch.equal(loaded.state_dict()[k], fsdp["model"][k])
    ref, res = losses(tmp_path / "ddp"), losses(tmp_path / "fsdp")
    assert sorted(res) == [4, 5, 6]
    for s in (4, 5, 6):
        assert res[s]["train_loss"] == pytest.approx(ref[s]["train_loss"], rel=1e-5, abs=1e-6)


def test_schedule_names_mean_one_thing():
    """cosine_v2 is the canonical name (as in the tokenizer configs); the original's c2i spelling 'cosine' is the
    same schedule."""
    from autoregressive.train_options import SCHEDULE_NAMES

    base = ["--tok-config", str(TINY_TOK), "--sub-exp-dir", "x", "--dataset", "imagenet_code", "--code-path", "c"]
    for name in ("cosine", "cosine_v2"):
        assert SCHEDULE_NAMES[build_parser().parse_args([*base, "--lr-scheduler", name]).lr_scheduler] == "cosine_v2"
    assert {SCHEDULE_NAMES[k] for k in SCHEDULE_NAMES} <= {"const", "cosine_v2", "wsd"}


@pytest.mark.slow
def test_2d_gpt_on_the_quickstart_2d_tokenizer_through_the_script(tmp_path):
    """The paper's 1D-vs-2D comparison: a tiny 2D-RoPE GPT trained by scripts/train_c2i.sh --gpt-2d on the codes of
    the quickstart's 2D tokenizer; the checkpoint records gpt_2d and loads, samples and scores as a 2D model."""
    from autoregressive import generate
    from autoregressive.val_loss import main as val_main

    tok_cfg = CONFIGS / "VQ_tiny32_2d.yaml"
    with threads(1):
        torch.manual_seed(2)
        tok = build_tokenizer(tok_cfg).eval()
        tok_ckpt = save_atomic({"model": tok.state_dict()}, tmp_path / "tok2d.pt")
        images = make_class_images(tmp_path / "images", 4, seed=0)
        extract(["--data-path", str(images), "--code-path", str(tmp_path / "codes"), "--image-size", "32",
                 "--model-config", str(tok_cfg), "--vq-ckpt", str(tok_ckpt), "--device", "cpu", "--num-workers", "0"])
    proc = subprocess.run(
        ["bash", "scripts/train_c2i.sh", "--gpt-2d", "--tok-config", str(tok_cfg), "--dataset", "imagenet_code",
         "--code-path", str(tmp_path / "codes"), "--gpt-model", "GPT-tiny", "--num-classes", str(N_CLASSES),
         "--save-path", str(tmp_path / "gpt"), "--sub-exp-dir", "tiny2d", "--iterations", "6", "--global-batch-size",
         "8", "--lr", "3e-3", "--num-workers", "0", "--device", "cpu", "--log-every", "3", "--no-compile",
         "--mixed-precision", "none"], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = tmp_path / "gpt" / "tiny2d" / "checkpoints" / "0000006.pt"
    ckpt = load_checkpoint_file(path)
    assert ckpt["gpt_config"]["gpt_2d"] is True and "positional_embedding" not in ckpt["model"]
    gpt = load_gpt(ckpt["gpt_config"], path)
    assert gpt.positional_embedding is None and gpt.block_size == tok.num_tokens
    codes = generate(gpt, torch.tensor([0, 3]), tok.num_tokens, cfg_scale=2.0, top_k=1, sample_logits=False)
    assert codes.shape == (2, tok.num_tokens) and int(codes.max()) < tok.codebook_size
    # the checkpoint describes its model: validation loss and the sampling script need no model flags
    res = val_main(["--gpt-ckpt", str(path), "--code-path", str(tmp_path / "codes"), "--device", "cpu",
                    "--num-workers", "0", "--precision", "none", "--no-txt", "--out-json", str(tmp_path / "val.json")])
    assert math.isfinite(res["val_loss"]) and res["num_images"] == 4 * N_CLASSES
    proc = subprocess.run(["bash", "scripts/sample_c2i.sh", "--gpt-ckpt", str(path), "--vq-ckpt", str(tok_ckpt),
                           "--mode", "visualize", "--class-idx", "0,3", "--qual-num", "2", "--precision", "none",
                           "--device", "cpu", "--sample-dir", str(tmp_path / "samples")],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "samples").rglob("multi_class_grid.png"))) == 1
    # a flag that contradicts the checkpoint is one clear error
    proc = subprocess.run(["bash", "scripts/sample_c2i.sh", "--gpt-ckpt", str(path), "--vq-ckpt", str(tok_ckpt),
                           "--num-classes", "1000", "--device", "cpu", "--sample-dir", str(tmp_path / "bad")],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--num-classes" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]


def test_resume_with_changed_training_arguments_is_refused(ar_data, tmp_path, single_thread):
    train_main(train_args(ar_data, tmp_path, "args", 4, "--ckpt-every", "2", "--early-stop-iter", "2"))
    with pytest.raises(ConfigError, match=r"lr: 0\.003 -> 1000000\.0"):
        train_main(train_args(ar_data, tmp_path, "args", 4, "--lr", "1e6"))
    train_main(train_args(ar_data, tmp_path, "args", 6, "--ckpt-every", "3"))  # a longer schedule: allowed
    run = tmp_path / "args"
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt"))[-1] == "0000006.pt"
    assert json.loads((run / "args.json").read_text())["iterations"] == 4  # the first segment's record stays
    assert json.loads((run / "args.resume-0000002.json").read_text())["iterations"] == 6


def test_version0_checkpoint_resumes_exactly(ar_data, tmp_path, single_thread):
    """A checkpoint in the layout written before format_version 1 (the launch's arguments under their old names, no
    tokenizer_config), written here from a run's own checkpoint, resumes to the uninterrupted run's final weights;
    its recorded arguments are still compared."""
    extra = ("--ckpt-every", "3", "--ema", "--mixed-precision", "none")
    train_main(train_args(ar_data, tmp_path, "ref", 6, *extra))
    written = load_checkpoint_file(tmp_path / "ref" / "checkpoints" / "0000003.pt")
    old = {k: v for k, v in written.items() if k not in ("format_version", "kind", "tokenizer_config")}
    settings = written["args"]
    old["args"] = {**{k: v for k, v in settings.items() if k not in ("exp_name", "tf32", "progress",
                                                                       "final_checkpoint")},
                   "sub_exp_dir": "ref", "no_tf32": False, "no_progress": False, "wandb_default_project": "x"}
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    torch.save(old, tmp_path / "old" / "checkpoints" / "0000003.pt")
    with pytest.raises(ConfigError, match=r"dropout_p: 0\.1 -> 0\.2"):
        train_main(train_args(ar_data, tmp_path, "old", 6, *extra, "--dropout-p", "0.2"))
    train_main(train_args(ar_data, tmp_path, "old", 6, *extra))
    ref, res = losses(tmp_path / "ref"), losses(tmp_path / "old")
    assert sorted(res) == [4, 5, 6] and [res[s]["train_loss"] for s in (4, 5, 6)] == \
        [ref[s]["train_loss"] for s in (4, 5, 6)]
    a = load_checkpoint_file(tmp_path / "ref" / "checkpoints" / "0000006.pt")
    b = load_checkpoint_file(tmp_path / "old" / "checkpoints" / "0000006.pt")
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert b["format_version"] == 1 and b["args"]["exp_name"] == "old"


def _metrics_lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1"])
def test_stop_signal_checkpoints_the_current_step_and_the_rerun_is_exact(ar_data, tmp_path, single_thread,
                                                                         signame):
    """SIGTERM (a scheduler's stop) or SIGUSR1 (SLURM's warning before the time limit): the step in progress finishes,
    a checkpoint of it is written, the lock is released and the run exits with 75 (requeue); the same command then
    ends bit-identical to an uninterrupted run."""
    T, extra = 40, ("--ckpt-every", "1000", "--mixed-precision", "none", "--ema")
    train_main(train_args(ar_data, tmp_path, "ref", T, *extra))
    args = train_args(ar_data, tmp_path, "pre", T, *extra)
    proc = subprocess.Popen([sys.executable, "-m", "autoregressive.train_c2i", *args], cwd=REPO, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while _metrics_lines(tmp_path / "pre" / "metrics.jsonl") < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(getattr(signal, signame))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-2000:]
    assert f"[train_c2i] preempted: {signame} at step" in stderr.strip().splitlines()[-1]
    saved = sorted(int(p.stem) for p in (tmp_path / "pre" / "checkpoints").glob("*.pt"))
    assert len(saved) == 1 and 3 <= saved[0] < T, saved
    assert not (tmp_path / "pre" / ".lock").exists()
    train_main(args)
    a = load_checkpoint_file(tmp_path / "ref" / "checkpoints" / f"{T:07d}.pt")
    b = load_checkpoint_file(tmp_path / "pre" / "checkpoints" / f"{T:07d}.pt")
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    ref, res = losses(tmp_path / "ref"), losses(tmp_path / "pre")
    assert [res[s]["train_loss"] for s in range(1, T + 1)] == [ref[s]["train_loss"] for s in range(1, T + 1)]


def _copy_checkpoint(source: Path, experiment: Path) -> None:
    (experiment / "checkpoints").mkdir(parents=True)
    shutil.copytree(source, experiment / "checkpoints" / source.name)


@pytest.mark.slow
def test_sharded_checkpoints_resume_on_another_process_count_and_consolidate(ar_data, tmp_path):
    """--checkpoint-format sharded (torch.distributed.checkpoint): every rank writes its shards into checkpoints/%07d/;
    a run resumes from it on another number of processes and another wrapping (FSDP 2 -> 1 process, 1 -> FSDP 2,
    DDP 2 -> 1), ending where the uninterrupted run ends up to float reduction order; load_gpt and convert_checkpoint
    read the folder as one checkpoint. No dropout, so that the per-rank random streams play no part."""
    from autoregressive.convert_checkpoint import main as convert

    extra = ("--ckpt-every", "3", "--ema", "--mixed-precision", "none", "--lr-scheduler", "const", "--dropout-p", "0",
             "--token-dropout-p", "0", "--class-dropout-prob", "0", "--checkpoint-format", "sharded")

    def final(name: str) -> dict:
        return load_checkpoint_file(tmp_path / name / "checkpoints" / "0000006")

    def assert_close(a: dict, b: dict) -> None:
        for key in ("model", "ema"):
            for k, v in a[key].items():
                torch.testing.assert_close(b[key][k], v, rtol=1e-4, atol=1e-5)

    fsdp = ("--data-parallel", "fsdp")
    torchrun("autoregressive.train_c2i", train_args(ar_data, tmp_path, "fsdp2", 6, *extra, *fsdp))
    shards = tmp_path / "fsdp2" / "checkpoints" / "0000003"
    assert sorted(p.name for p in shards.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    _copy_checkpoint(shards, tmp_path / "one")
    with threads(1):
        train_main(train_args(ar_data, tmp_path, "one", 6, *extra, *fsdp))  # no process group: one unsharded process
        train_main(train_args(ar_data, tmp_path, "ref1", 6, *extra))
    assert_close(final("fsdp2"), final("one"))
    _copy_checkpoint(tmp_path / "ref1" / "checkpoints" / "0000003", tmp_path / "two")
    torchrun("autoregressive.train_c2i", train_args(ar_data, tmp_path, "two", 6, *extra, *fsdp))
    assert_close(final("ref1"), final("two"))
    torchrun("autoregressive.train_c2i", train_args(ar_data, tmp_path, "ddp2", 6, *extra))
    _copy_checkpoint(tmp_path / "ddp2" / "checkpoints" / "0000003", tmp_path / "ddp_to_one")
    with threads(1):
        train_main(train_args(ar_data, tmp_path, "ddp_to_one", 6, *extra))
    assert_close(final("ddp2"), final("ddp_to_one"))
    # one checkpoint to every reader: the consolidated dict, load_gpt and a release folder
    whole = final("fsdp2")
    assert whole["format_version"] == 1 and set(whole["ema"]) == set(whole["model"])
    assert all(isinstance(k, str) for k in whole["optimizer"]["state"])
    model = load_gpt(tmp_path / "fsdp2" / "checkpoints" / "0000006")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in whole["model"].items())
    convert([str(tmp_path / "fsdp2" / "checkpoints" / "0000006"), str(tmp_path / "release")])
    released = load_gpt(tmp_path / "release")
    assert all(torch.equal(released.state_dict()[k], v) for k, v in whole["model"].items())
