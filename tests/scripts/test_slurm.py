"""The SLURM templates (scripts/slurm/): under GIGATOK_DRY_RUN=1 with SLURM's variables set here, each prints one srun
task per node and, for every node, the torchrun command its task would launch (c10d rendezvous on the first host,
the job id as rendezvous id, SIGUSR1 forwarded, the shutdown grace); the documented example of each template parses
with its driver's own flags. With stand-ins for srun, scontrol and scancel on PATH, the batch shell requeues a run that
exits 75, hands the warning signal to the job steps once, and does not requeue a finished or cancelled run."""
from __future__ import annotations

import importlib
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from testlib import REPO, child_env

SLURM = REPO / "scripts" / "slurm"
TEMPLATES = sorted(p.name for p in SLURM.glob("*.sbatch"))
JOB = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu-[003-004]", "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2",
       "SLURM_GPUS_PER_NODE": "h100:8", "SLURM_CPUS_PER_TASK": "64", "SLURM_SUBMIT_DIR": str(REPO)}
# template -> (entry script, driver module, the warning signal it requests, its default MAX_RESTARTS)
EXPECTED = {
    "train_vq.sbatch": ("scripts/train_vq.sh", "tokenizer.train", "B:USR1@300", "3"),
    "train_vq_fsdp.sbatch": ("scripts/train_vq_fsdp.sh", "tokenizer.train", "B:USR1@300", "3"),
    "train_c2i.sbatch": ("scripts/train_c2i.sh", "autoregressive.train_c2i", "B:USR1@300", "3"),
    "extract_code_c2i.sbatch": ("scripts/extract_code_c2i.sh", "autoregressive.extract_codes", "B:USR1@120", "0"),
    "sample_c2i_50k.sbatch": ("scripts/sample_c2i_search_cfg.sh", "autoregressive.sample_c2i", None, "0"),
}


def sbatch_env(path: str | None = None, **extra: str) -> dict:
    env = child_env(**{**JOB, **extra})
    for key in ("GPUS", "NNODES", "NODE_RANK", "MASTER_ADDR", "PORT", "RDZV_ENDPOINT", "RDZV_ID", "MAX_RESTARTS",
                "SLURM_STEP_ID", "REQUEUE_ON_WARNING"):
        if key not in extra:
            env.pop(key, None)
    if path is not None:
        env["PATH"] = path
    return env


def example(template: str) -> list[str]:
    """The example command in the template's header comment, as arguments (after the sbatch file)."""
    text = (SLURM / template).read_text()
    lines = [line[1:].strip() for line in text.splitlines() if line.startswith("#") and not line.startswith("#!")]
    start = next(i for i, line in enumerate(lines) if line.startswith("sbatch ") and template in line)
    joined = ""
    for line in lines[start:]:
        joined += line.rstrip("\\") + " "
        if not line.endswith("\\"):
            break
    words = shlex.split(joined.replace("$IMGNET_ROOT", "/data/imagenet"))
    return words[words.index(f"scripts/slurm/{template}") + 1:]


def dry_run(template: str, args: list[str], **extra: str) -> tuple[list[str], dict[int, list[list[str]]]]:
    """(the srun command, {node id: [launched command lines]}) of a dry run."""
    proc = subprocess.run(["bash", str(SLURM / template), *args], cwd=REPO, capture_output=True, text=True,
                          env=sbatch_env(GIGATOK_DRY_RUN="1", **extra), timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    srun, nodes, node = None, {}, None
    for line in proc.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word == "DRY-RUN-SRUN":
            srun = shlex.split(rest)
        elif word == "DRY-RUN-NODE":
            node = int(rest)
            nodes[node] = []
        elif word in ("DRY-RUN", "DRY-RUN-EXEC"):
            nodes[node].append([word, *shlex.split(rest)])
    return srun, nodes


def flag(argv: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_dry_runs_one_agent_per_node_with_the_slurm_rendezvous(template):
    assert set(TEMPLATES) == set(EXPECTED)
    script, module, warning, restarts = EXPECTED[template]
    text = (SLURM / template).read_text()
    directives = re.findall(r"^#SBATCH (\S+)", text, re.M)
    assert "--ntasks-per-node=1" in directives and "--requeue" in directives
    assert ([d.split("=", 1)[1] for d in directives if d.startswith("--signal=")] or [None]) == [warning]
    args = example(template)
    srun, nodes = dry_run(template, args)
    assert srun[:5] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=0"]
    assert srun[-len(args) - 2:] == ["bash", str(REPO / script), *args]
    assert sorted(nodes) == [0, 1]
    for lines in nodes.values():
        (dry, launched_module, *launched_args), exec_line = lines[-2], lines[-1]
        assert dry == "DRY-RUN" and launched_module == module
        importlib.import_module(module).parse_args(launched_args)  # SystemExit on an unknown or bad flag
        argv = exec_line[1:]
        assert argv[1:3] == ["-m", "torch.distributed.run"]
        assert flag(argv, "--nnodes") == "2" and flag(argv, "--nproc-per-node") == "8"
        assert flag(argv, "--rdzv-backend") == "c10d" and flag(argv, "--rdzv-id") == "4242"
        assert flag(argv, "--rdzv-endpoint") == f"gpu-003:{29500 + 4242}"  # scontrol is not here: the fallback
        assert flag(argv, "--max-restarts") == restarts and flag(argv, "--shutdown-timeout") == "300"
        assert "SIGUSR1" in flag(argv, "--signals-to-handle").split(",")
        assert not any(a.startswith(("--node-rank", "--master-addr")) for a in argv)
        assert argv[argv.index("-m", 3) + 1:] == [module, *launched_args]


def test_overrides_and_one_node():
    _, nodes = dry_run("train_c2i.sbatch", ["--iterations", "10"], SLURM_JOB_NODELIST="n1", SLURM_NNODES="1",
                       SLURM_JOB_NUM_NODES="1", GPUS="4", RDZV_PORT="1234", MAX_RESTARTS="0", PREEMPT_GRACE="900")
    argv = nodes[0][-1][1:]
    assert flag(argv, "--nproc-per-node") == "4" and flag(argv, "--rdzv-endpoint") == "n1:1234"
    assert flag(argv, "--max-restarts") == "0" and flag(argv, "--shutdown-timeout") == "900"


@pytest.mark.parametrize("nodelist, first", [("gpu-[003-010,012],cpu1", "gpu-003"), ("a1,b2", "a1"), ("node7", "node7"),
                                             ("x[5,9]", "x5"), ("rack1-[07-08]", "rack1-07")])
def test_first_host_without_scontrol(nodelist, first):
    proc = subprocess.run(["bash", "-c", f"source {SLURM / 'slurm.sh'}; slurm_first_host"], cwd=REPO, text=True,
                          capture_output=True, env=sbatch_env(SLURM_JOB_NODELIST=nodelist), timeout=30)
    assert proc.stdout.strip() == first, proc.stderr


def stand_ins(folder: Path, srun_exit: int, wait_for_signal: bool = False) -> Path:
    """srun, scontrol and scancel that record their calls in folder/calls; srun exits ``srun_exit`` (after scancel
    was called when ``wait_for_signal``); scontrol show hostnames expands a fixed list."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    calls = folder / "calls"
    scripts = {
        "srun": f"""echo "srun NNODES=$NNODES GPUS=$GPUS RDZV_ENDPOINT=$RDZV_ENDPOINT RDZV_ID=$RDZV_ID $*" >> {calls}
{f'while [ ! -e {folder}/signalled ]; do sleep 0.05; done' if wait_for_signal else ''}
exit {srun_exit}""",
        "scontrol": f"""echo "scontrol $*" >> {calls}
[ "$1 $2" = "show hostnames" ] && printf 'hostA\\nhostB\\n'
exit 0""",
        "scancel": f"""echo "scancel $*" >> {calls}
touch {folder}/signalled""",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("srun_exit, requeued", [(75, True), (0, False), (1, False)])
def test_the_batch_shell_requeues_a_run_that_exits_75(tmp_path, srun_exit, requeued):
    bin_dir = stand_ins(tmp_path, srun_exit)
    proc = subprocess.run(["bash", str(SLURM / "train_vq.sbatch"), "--iterations", "5"], cwd=REPO, text=True,
                          capture_output=True, env=sbatch_env(f"{bin_dir}:{os.environ['PATH']}"), timeout=60)
    assert proc.returncode == srun_exit, proc.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == "scontrol show hostnames gpu-[003-004]"
    assert calls[1].startswith("srun NNODES=2 GPUS=8 RDZV_ENDPOINT=hostA:33742 RDZV_ID=4242 --nodes=2")
    assert calls[1].endswith(f"bash {REPO}/scripts/train_vq.sh --iterations 5")
    assert ("scontrol requeue 4242" in calls) == requeued and len(calls) == 2 + requeued


@pytest.mark.parametrize("template, srun_exit, requeued", [("train_c2i.sbatch", 75, True),
                                                           ("train_c2i.sbatch", 1, False),
                                                           ("extract_code_c2i.sbatch", 1, True)])
def test_the_warning_signal_is_handed_to_the_job_steps_once(tmp_path, template, srun_exit, requeued):
    """#SBATCH --signal=B:USR1@... reaches the batch shell only: it signals the steps (scancel --signal=USR1, which
    spares the batch step) once, and requeues when the run exits 75 (or, for extraction, in any case)."""
    bin_dir = stand_ins(tmp_path, srun_exit, wait_for_signal=True)
    proc = subprocess.Popen(["bash", str(SLURM / template)], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=sbatch_env(f"{bin_dir}:{os.environ['PATH']}"))
    deadline = time.time() + 30
    while not (tmp_path / "calls").exists() or "srun" not in (tmp_path / "calls").read_text():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGUSR1)  # a second warning is not forwarded again
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == srun_exit, err
    calls = (tmp_path / "calls").read_text().splitlines()
    assert [c for c in calls if c.startswith("scancel")] == ["scancel --signal=USR1 4242"]
    assert ("scontrol requeue 4242" in calls) == requeued, calls


def test_a_cancelled_job_is_not_requeued(tmp_path):
    bin_dir = stand_ins(tmp_path, 75, wait_for_signal=True)
    proc = subprocess.Popen(["bash", str(SLURM / "train_vq.sbatch")], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=sbatch_env(f"{bin_dir}:{os.environ['PATH']}"))
    deadline = time.time() + 30
    while not (tmp_path / "calls").exists() or "srun" not in (tmp_path / "calls").read_text():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # scancel / preemption: SLURM signals the steps itself
    time.sleep(0.3)
    (tmp_path / "signalled").touch()  # the run stops (75)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err
    assert not any(c.startswith(("scontrol requeue", "scancel")) for c in (tmp_path / "calls").read_text().splitlines())


def test_outside_slurm_the_templates_stop_with_one_line():
    env = {k: v for k, v in sbatch_env().items() if not k.startswith("SLURM_JOB")}
    proc = subprocess.run(["bash", str(SLURM / "train_vq.sbatch")], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: not inside a SLURM job (submit this file with sbatch)"
