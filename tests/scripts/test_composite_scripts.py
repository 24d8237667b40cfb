"""Every composite script runs its chain with the drivers' real flags: under GIGATOK_DRY_RUN=1 each prints the
commands it would launch, and each printed command must parse with its driver's own argument parser."""
from __future__ import annotations

import importlib
import os
import shlex
import subprocess

import pytest

from testlib import REPO, child_env

ENV = {"IMGNET_ROOT": "/data/imagenet", "TOK_CONFIG": "configs/vq/VQ_BL256.yaml", "VQ_EXP_DIR": "VQ_BL256",
       "LM_EXP_DIR": "GPT_B_on_BL", "TOK_LIN_EXP_DIR": "tok_probe", "LM_LIN_EXP_DIR": "lm_probe",
       "GIGATOK_DRY_RUN": "1", "GPUS": "8"}
# scripts that compute a gFID (and rFID) check their reference batches before launching anything
FID_SCRIPTS = ["eval_c2i.sh", "train_c2i_and_eval.sh", "train_c2i_and_eval_fsdp.sh", "train_vq_and_eval.sh",
               "train_vq_and_eval_fsdp.sh"]
# script -> the driver modules it launches, in order
CHAINS = {
    "train_c2i_and_eval.sh": ["autoregressive.train_c2i", "autoregressive.sample_c2i", "autoregressive.val_loss"],
    "train_c2i_and_eval_fsdp.sh": ["autoregressive.train_c2i", "autoregressive.sample_c2i",
                                   "autoregressive.val_loss"],
    "train_vq_and_eval.sh": ["tokenizer.train", "tokenizer.reconstruct", "autoregressive.train_c2i",
                             "autoregressive.sample_c2i", "autoregressive.val_loss"],
    "train_vq_and_eval_fsdp.sh": ["tokenizer.train", "tokenizer.reconstruct", "autoregressive.train_c2i",
                                  "autoregressive.sample_c2i", "autoregressive.val_loss"],
    "train_tok_lin_probe_and_eval.sh": ["tokenizer.lin_probe"] * 2,
    "train_lm_lin_probe_and_eval.sh": ["autoregressive.lin_probe"] * 2,
    "train_all_lin_probe_and_eval.sh": ["tokenizer.lin_probe"] * 2 + ["autoregressive.lin_probe"] * 2,
}


@pytest.fixture(scope="module", autouse=True)
def reference_batches(tmp_path_factory):
    """Stand-ins for the gFID and rFID reference batches (the scripts only check that they are there)."""
    folder = tmp_path_factory.mktemp("refs")
    for name, var in (("VIRTUAL_imagenet256_labeled.npz", "GT_NPZ_PATH"), ("val_imagenet.npz", "GT_VAL_NPZ_PATH")):
        (folder / name).write_bytes(b"")
        ENV[var] = str(folder / name)
    yield folder
    ENV.pop("GT_NPZ_PATH"), ENV.pop("GT_VAL_NPZ_PATH")


def run_script(script: str, **extra: str | None) -> subprocess.CompletedProcess:
    """The script with ENV and ``extra`` (a None value unsets that variable)."""
    merged = {**ENV, **extra}
    env = child_env(**{k: v for k, v in merged.items() if v is not None})
    for key in [k for k, v in merged.items() if v is None]:
        env.pop(key, None)
    return subprocess.run(["bash", str(REPO / "scripts" / "composite_cmd" / script)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def dry_run(script: str, **extra: str | None) -> list[tuple[str, list[str]]]:
    proc = run_script(script, **extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = []
    for line in proc.stdout.splitlines():
        if line.startswith("DRY-RUN "):
            words = shlex.split(line[len("DRY-RUN "):])
            out.append((words[0], words[1:]))
    return out


@pytest.mark.parametrize("script", sorted(CHAINS))
def test_composite_script_commands_parse(script):
    commands = dry_run(script)
    assert [m for m, _ in commands] == CHAINS[script]
    for module, args in commands:
        importlib.import_module(module).parse_args(args)  # raises SystemExit on an unknown or bad flag


def test_the_original_recipes_reach_the_drivers():
    cmds = dict(dry_run("train_c2i_and_eval.sh"))
    train = cmds["autoregressive.train_c2i"]
    assert train[train.index("--lr-scheduler") + 1] == "wsd" and train[train.index("--iterations") + 1] == "1500000"
    sample = cmds["autoregressive.sample_c2i"]
    assert "--search" in sample and sample[sample.index("--cfg-schedule") + 1] == "step"
    assert "--cfg-scale" not in sample  # the search starts from the original's per-model table
    probe = dry_run("train_vq_and_eval.sh")
    tok_train = probe[0][1]
    assert tok_train[tok_train.index("--iterations") + 1] == str(100 * 256 * 5000 // 128)
    rec = probe[1][1]
    assert rec[rec.index("--vq-ckpt") + 1].endswith("VQ_BL256/checkpoints/1000000.pt")
    lm = probe[2][1]
    assert lm[lm.index("--early-stop-iter") + 1] == "250000" and lm[lm.index("--warmup") + 1] == "0"
    assert probe[3][1][probe[3][1].index("--cfg-schedule") + 1] == "constant"
    lin = dry_run("train_tok_lin_probe_and_eval.sh", VQ_CKPT="VQ_BL256_e200.pt")
    assert lin[1][1][lin[1][1].index("--lin-probe-ckpt") + 1].endswith("tok_probe/checkpoints/0089.pt")
    assert lin[0][1][lin[0][1].index("--vq-ckpt") + 1] == "VQ_BL256_e200.pt"


@pytest.mark.parametrize("script", FID_SCRIPTS)
def test_a_missing_reference_batch_stops_the_chain_before_anything_is_launched(script, tmp_path):
    missing = tmp_path / "nowhere" / "VIRTUAL_imagenet256_labeled.npz"
    proc = run_script(script, GT_NPZ_PATH=str(missing), GPT_CKPT="GPT_B256_e300_VQ_BL.pt")
    assert proc.returncode == 2 and "DRY-RUN" not in proc.stdout
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"GT_NPZ_PATH={missing} is not a file" in error[0]
    assert "VIRTUAL_imagenet256_labeled.npz (https://openaipublic" in error[0] and "SKIP_FID=True" in error[0]
    # SKIP_FID=True: no gFID, so no reference needed; the chain runs (without the sampling step)
    skipped = run_script(script, GT_NPZ_PATH=str(missing), GPT_CKPT="GPT_B256_e300_VQ_BL.pt", SKIP_FID="True")
    assert skipped.returncode == 0 and "DRY-RUN" in skipped.stdout and "sample_c2i" not in skipped.stdout


def test_the_reference_defaults_are_the_original_fallback_and_val_sh_output(reference_batches):
    """Unset GT_NPZ_PATH: PROJECT_ROOT/VIRTUAL_imagenet256_labeled.npz, as the original; GT_VAL_NPZ_PATH: the npz
    `scripts/val.sh --sample-dir results/reconstructions/img_data` writes."""
    sample = dict(dry_run("train_c2i_and_eval.sh", GT_NPZ_PATH=None, PROJECT_ROOT=str(reference_batches)))
    sample = sample["autoregressive.sample_c2i"]
    assert sample[sample.index("--gt-npz-path") + 1] == f"{reference_batches}/VIRTUAL_imagenet256_labeled.npz"
    proc = run_script("train_vq_and_eval.sh", GT_VAL_NPZ_PATH=None, PROJECT_ROOT=str(reference_batches))
    assert proc.returncode == 2
    assert f"GT_VAL_NPZ_PATH={reference_batches}/results/reconstructions/img_data/val_imagenet.npz" in proc.stderr


def test_the_probes_run_the_published_global_batch():
    cmds = dry_run("train_all_lin_probe_and_eval.sh", GPT_CKPT="GPT_B256_e300_VQ_BL.pt", VQ_CKPT="VQ_BL256_e200.pt")
    for _, args in cmds:
        assert args[args.index("--batch-size") + 1] == "128" and args[args.index("--global-batch-size") + 1] == "8192"
    cmds = dry_run("train_lm_lin_probe_and_eval.sh", GPT_CKPT="GPT_B256_e300_VQ_BL.pt", LIN_GLOBAL_BSZ="None")
    assert all("--global-batch-size" not in args for _, args in cmds)  # the original's: LIN_BSZ x processes


def test_common_sh_turns_huge_pages_on_unless_told_otherwise():
    """scripts/common.sh exports THP_MEM_ALLOC_ENABLE=1 (PyTorch's huge-page CPU allocations) and keeps a user's 0."""
    probe = f'. "{REPO / "scripts" / "common.sh"}"; echo "thp=$THP_MEM_ALLOC_ENABLE"'
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    assert subprocess.run(["bash", "-c", probe], env=env, capture_output=True, text=True,
                          check=True).stdout.strip().endswith("thp=1")
    assert subprocess.run(["bash", "-c", probe], env={**env, "THP_MEM_ALLOC_ENABLE": "0"}, capture_output=True,
                          text=True, check=True).stdout.strip().endswith("thp=0")
