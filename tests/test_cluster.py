"""Cluster launches with real torchrun processes on CPU (gloo), through the entry scripts (scripts/common.sh):

- multi-node: two torchrun agents on this host (NNODES=2, NODE_RANK=0|1, GPUS=1, one MASTER_ADDR/PORT, one results
  folder) train to the same weights, bit for bit, as one agent with GPUS=2 (tokenizer and GPT trainers), and sample
  the same images;
- elastic restart: with MAX_RESTARTS=1 one worker SIGKILLed after the first checkpoint (the launcher alive) is
  restarted with its group, the run resumes from that checkpoint by itself and ends with the uninterrupted weights
  (each trainer: the ``trainer`` fixture);
- preemption: SIGTERM to the entry script after the first checkpoint checkpoints the current step and exits 75; the
  same command run again ends with the uninterrupted weights (each trainer);
- the same recipe on 2 processes x 1 accumulation step and 1 process x 2 accumulation steps sees the same data in the
  same order and ends with the same weights up to float reduction order. The model's random streams (dropout, label
  dropout) are seeded per rank and step, so the recipes here turn them off; with them on, both runs are valid but
  draw different masks.

The runs are tiny (a micro VQ tokenizer, GPT-tiny, a few steps) and share their reference runs (module fixtures).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from testlib import REPO, child_env, free_port, make_images, threads

for _sub in ("tokenizer", "autoregressive"):  # the trainers' test helpers (tiny recipes, code data)
    sys.path.insert(0, str(REPO / "tests" / _sub))
import test_train as tok_tests  # noqa: E402  (modules, not names: their tests are not collected twice)

from utils.checkpoint import load_checkpoint_file  # noqa: E402
from utils.logging import read_metrics  # noqa: E402
from utils.train_data import StepBatchSampler  # noqa: E402

import test_train_c2i as gpt_tests  # noqa: E402

pytestmark = pytest.mark.slow
NO_DROPOUT = ("--dropout-p", "0", "--token-dropout-p", "0", "--class-dropout-prob", "0")
GPT_CKPT_EVERY = 8
# GPT: label and token dropout on (per-rank random streams must line up across nodes and restarts)
GPT_EXTRA = ("--ckpt-every", str(GPT_CKPT_EVERY), "--ema", "--mixed-precision", "none", "--lr-scheduler", "const")
GPT_STEPS = 24
TOK_STEPS = 4
TOK_CKPT_EVERY = 2
TOK_EXTRA = ("--ckpt-every", str(TOK_CKPT_EVERY), "--ema")
TOK_OVER = ["loss.params.disc_start=100"]  # no discriminator: no random augmentation, nothing per rank


# ---------------------------------------------------------------------------------------------------------------
# launches

def script(name: str, args, **env: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", f"scripts/{name}", *map(str, args)], cwd=REPO, env=child_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(*procs: subprocess.Popen, timeout: int = 180) -> None:
    """Wait for the launches; on a failure or a hang, fail with the output's tail (the whole group killed)."""
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for each in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(each.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        assert proc.returncode == 0, f"exit {proc.returncode}:\n{out[-6000:]}"


def one_node(name: str, args, **env: str) -> None:
    finish(script(name, args, GPUS="2", PORT=str(free_port()), **env))


def two_nodes(name: str, args) -> None:
    """Two torchrun agents (static rendezvous, one process each) as two nodes would start them."""
    port = str(free_port())
    finish(*[script(name, args, NNODES="2", NODE_RANK=str(rank), GPUS="1", MASTER_ADDR="127.0.0.1", PORT=port)
             for rank in (0, 1)])


def final(exp: Path, steps: int) -> dict:
    return load_checkpoint_file(exp / "checkpoints" / f"{steps:07d}.pt")


def assert_identical(a: dict, b: dict, keys=("model", "ema")) -> None:
    for key in keys:
        assert set(a[key]) == set(b[key]), key
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)


# ---------------------------------------------------------------------------------------------------------------
# shared data and reference runs (1 node x 2 processes)

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def ar_data(root):
    with threads(1):
        return gpt_tests.make_ar_data(root / "ar_data", train_per_class=4, val_per_class=1)


@pytest.fixture(scope="module")
def images(root) -> Path:
    return make_images(root / "images")


def gpt_args(data: dict, save: Path, name: str, *extra: str) -> list[str]:
    return gpt_tests.train_args(data, save, name, GPT_STEPS, *GPT_EXTRA, *extra)


def tok_args(images: Path, save: Path, name: str, *extra: str) -> list[str]:
    return tok_tests.train_args(images, save, name, TOK_STEPS, *TOK_EXTRA, *extra, overrides=TOK_OVER)


@pytest.fixture(scope="module")
def gpt_ref(ar_data, root) -> Path:
    one_node("train_c2i.sh", gpt_args(ar_data, root / "gpt", "ref"))
    return root / "gpt" / "ref"


@pytest.fixture(scope="module")
def tok_ref(images, root) -> Path:
    one_node("train_vq.sh", tok_args(images, root / "tok", "ref"))
    return root / "tok" / "ref"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One trainer's cluster recipe: its entry script, arguments, length, first periodic checkpoint and reference."""
    script: str
    args: Callable[[Path, str], list[str]]  # (save path, experiment name) -> the script's arguments
    steps: int
    first_checkpoint: int
    ref: Path  # the reference experiment (1 node x 2 processes, uninterrupted)

    def wait_for_first_checkpoint(self, exp: Path, proc: subprocess.Popen) -> None:
        """Return once the first periodic checkpoint is written (the run then still has steps to go)."""
        first = exp / "checkpoints" / f"{self.first_checkpoint:07d}.pt"
        deadline = time.time() + 240
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)


@pytest.fixture(params=["gpt", "tokenizer"])
def trainer(request) -> Recipe:
    """Each trainer in turn; only the chosen one's data and reference run are made."""
    if request.param == "gpt":
        data = request.getfixturevalue("ar_data")
        return Recipe("train_c2i.sh", lambda save, name: gpt_args(data, save, name), GPT_STEPS, GPT_CKPT_EVERY,
                      request.getfixturevalue("gpt_ref"))
    folder = request.getfixturevalue("images")
    return Recipe("train_vq.sh", lambda save, name: tok_args(folder, save, name), TOK_STEPS, TOK_CKPT_EVERY,
                  request.getfixturevalue("tok_ref"))


# ---------------------------------------------------------------------------------------------------------------
# 2 nodes x 1 process == 1 node x 2 processes

def test_two_nodes_train_the_gpt_of_one_node_bit_for_bit(ar_data, gpt_ref, tmp_path):
    two_nodes("train_c2i.sh", gpt_args(ar_data, tmp_path, "nodes"))
    ckpt = final(tmp_path / "nodes", GPT_STEPS)
    assert ckpt["trainer_state"]["world_size"] == 2
    assert_identical(final(gpt_ref, GPT_STEPS), ckpt)


def test_two_nodes_train_the_tokenizer_of_one_node_bit_for_bit(images, tok_ref, tmp_path):
    two_nodes("train_vq.sh", tok_args(images, tmp_path, "nodes"))
    assert_identical(final(tok_ref, TOK_STEPS), final(tmp_path / "nodes", TOK_STEPS))


def test_two_nodes_sample_the_images_of_one_node(ar_data, gpt_ref, tmp_path):
    def args(out: Path) -> list[str]:
        return ["--vq-ckpt", ar_data["tok_ckpt"], "--tok-config", gpt_tests.TINY_TOK, "--gpt-model", "GPT-tiny",
                "--gpt-ckpt", gpt_ref / "checkpoints" / f"{GPT_STEPS:07d}.pt", "--num-classes", gpt_tests.N_CLASSES,
                "--precision", "none", "--device", "cpu", "--sample-dir", out, "--cfg-scale", "2.0",
                "--num-fid-samples", "4", "--per-proc-batch-size", "2"]

    one_node("sample_c2i_search_cfg.sh", args(tmp_path / "one"))
    two_nodes("sample_c2i_search_cfg.sh", args(tmp_path / "two"))
    one, two = (np.load(next((tmp_path / d).glob("*.npz"))) for d in ("one", "two"))
    assert one["arr_0"].shape == (4, 32, 32, 3)
    for key in ("arr_0", "labels", "codes"):
        assert np.array_equal(one[key], two[key]), key


# ---------------------------------------------------------------------------------------------------------------
# elastic restart after a worker dies

def _workers(agent: int) -> dict[int, int]:
    """{RANK: pid} of the torchrun agent's worker processes."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != agent:
                continue
            env = dict(kv.split("=", 1) for kv in (stat.parent / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, ValueError):
            continue
        if "RANK" in env:
            out[int(env["RANK"])] = int(stat.parent.name)
    return out


def test_elastic_restart_after_a_worker_is_killed_resumes_and_ends_bit_identical(trainer, tmp_path):
    exp = tmp_path / "elastic"
    proc = script(trainer.script, trainer.args(tmp_path, exp.name), GPUS="2", PORT=str(free_port()), MAX_RESTARTS="1")
    trainer.wait_for_first_checkpoint(exp, proc)
    agents = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    victim = _workers(agents[0])[1]
    os.kill(victim, signal.SIGKILL)  # one worker, not the launcher
    assert not (exp / "checkpoints" / f"{trainer.steps:07d}.pt").exists(), "the run ended before the kill"
    finish(proc)
    resumes = (exp / "resumes.jsonl").read_text().splitlines()
    assert len(resumes) == 1 and f'"step": {trainer.first_checkpoint}' in resumes[0], resumes
    assert_identical(final(trainer.ref, trainer.steps), final(exp, trainer.steps))
    assert sorted(read_metrics(exp / "metrics.jsonl")) == list(range(1, trainer.steps + 1))


# ---------------------------------------------------------------------------------------------------------------
# 2 processes x 1 accumulation step ~ 1 process x 2 accumulation steps

def test_the_data_order_is_the_same_on_any_process_count():
    """Rank slices of 2 processes == the micro-batches of 1 process with 2 accumulation steps, step by step."""
    two = [StepBatchSampler(37, 8, rank, 2, seed=3, end_step=12) for rank in (0, 1)]
    one = StepBatchSampler(37, 8, 0, 1, seed=3, end_step=12, micro_batches=2)
    per_step_two = [a + b for a, b in zip(*two, strict=True)]
    per_step_one = [a + b for a, b in zip(*[iter(one)] * 2, strict=True)]
    assert len(per_step_one) == 12 and per_step_one == per_step_two


def _close(a: dict, b: dict, keys=("model",)) -> None:
    for key in keys:
        for name, value in a[key].items():
            if name.endswith("codebook_used"):  # a monitor: the codes this process saw last (rank 0's under DDP)
                continue
            torch.testing.assert_close(b[key][name], value, rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")


def test_gpt_two_processes_equal_one_process_with_two_accumulation_steps(ar_data, tmp_path, single_thread):
    one_node("train_c2i.sh", gpt_args(ar_data, tmp_path, "p2", *NO_DROPOUT))
    gpt_tests.train_main(gpt_args(ar_data, tmp_path, "acc2", *NO_DROPOUT, "--gradient-accumulation-steps", "2"))
    _close(final(tmp_path / "p2", GPT_STEPS), final(tmp_path / "acc2", GPT_STEPS), keys=("model", "ema"))
    two, one = gpt_tests.losses(tmp_path / "p2"), gpt_tests.losses(tmp_path / "acc2")
    for step in range(1, GPT_STEPS + 1):  # the same batches: the same loss at every step
        assert one[step]["train_loss"] == pytest.approx(two[step]["train_loss"], rel=1e-5)


def test_tokenizer_two_processes_equal_one_process_with_two_accumulation_steps(images, tok_ref, tmp_path,
                                                                               single_thread):
    tok_tests.train_main(tok_args(images, tmp_path, "acc2", "--gradient-accumulation-steps", "2"))
    _close(final(tok_ref, TOK_STEPS), final(tmp_path / "acc2", TOK_STEPS), keys=("model", "ema"))
    two, one = read_metrics(tok_ref / "metrics.jsonl"), read_metrics(tmp_path / "acc2" / "metrics.jsonl")
    for step in range(1, TOK_STEPS + 1):
        assert one[step]["rec_loss"] == pytest.approx(two[step]["rec_loss"], rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# preemption through the script: SIGTERM to the launcher -> checkpoint of the current step, exit 75, rerun exact

def test_sigterm_to_the_launcher_checkpoints_the_step_exits_75_and_the_rerun_is_exact(trainer, tmp_path):
    exp = tmp_path / "preempted"
    args, env = trainer.args(tmp_path, exp.name), {"GPUS": "2", "PORT": str(free_port())}
    proc = script(trainer.script, args, **env)
    trainer.wait_for_first_checkpoint(exp, proc)
    os.kill(proc.pid, signal.SIGTERM)  # the script (what SLURM or a user signals), not its process group
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 75, out[-4000:]
    assert "preempted" in out.strip().splitlines()[-1], out[-2000:]
    steps = sorted(read_metrics(exp / "metrics.jsonl"))
    saved = sorted(int(p.stem) for p in (exp / "checkpoints").glob("*.pt"))
    assert saved[-1] == steps[-1] < trainer.steps, (saved, steps[-1])  # the step it stopped at, not the last periodic
    assert not (exp / ".lock").exists()
    finish(script(trainer.script, args, **env))
    assert_identical(final(trainer.ref, trainer.steps), final(exp, trainer.steps))
