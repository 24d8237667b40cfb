"""The training kit both trainers (tokenizer.train, autoregressive.train_c2i) are built from.

What is the same for every model lives here once: precision names, the divergence error and exit codes, TF32,
autocast, DDP / FSDP2 wrapping, gradient-sync suppression for accumulation, the finite-weights check, per-rank RNG
state, full (unsharded) state dicts for checkpoints, the checkpoint / resume / logging flags, and the ``main`` wrapper
that turns the project's errors into one line and an exit code. A trainer keeps what is specific to its model: data,
losses and the step.

Every trainer follows one contract: ``Trainer(args)`` only stores the arguments; ``build()`` sets up the process
group, folders, data, model, optimiser and resume state; ``train()`` runs and returns a result dict; ``close()``
releases logs and writers (also after a failure).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from utils.checkpoint import CheckpointError, load_state_dict_strict
from utils.config import ConfigError
from utils.distributed import any_rank, cleanup

# --precision / --mixed-precision names -> autocast dtype (None: no autocast, fp32 compute)
PRECISIONS = {"none": None, "fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
FSDP_MODES = ("fsdp", "sdp", "hsdp")
DATA_PARALLEL_HELP = ("ddp; or FSDP2 fully_shard per transformer block (under torchrun): fsdp = reshard after forward "
                      "(FULL_SHARD), sdp = keep parameters gathered until backward (SHARD_GRAD_OP), hsdp = shard "
                      "within a node, replicate across nodes")

EXIT_CONFIG = 2  # = utils.cli.EXIT_BAD_INPUT
EXIT_DIVERGED = 3  # = utils.cli.EXIT_DIVERGED


class LauncherGone(RuntimeError):
    """The torchrun launcher of this worker died; the worker stops instead of training on unsupervised."""


class TrainingDiverged(RuntimeError):
    """A loss, gradient or weight became NaN/inf; the message names the step, the terms and the last good checkpoint."""


def autocast_dtype(precision: str) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def storage_dtype(precision: str) -> torch.dtype:
    """The dtype weights are kept in for this precision name (float32 for none/fp32)."""
    return autocast_dtype(precision) or torch.float32


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def configure_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 matmuls and convolutions on CUDA (the original's trainers turn them on); nothing to do elsewhere."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


# ----- wrapping ------------------------------------------------------------------------------------------------------

def uses_fsdp(mode: str) -> bool:
    """FSDP2 runs when asked for and a process group exists (torchrun); a plain single process trains unsharded."""
    if mode not in ("ddp", *FSDP_MODES):
        raise ConfigError(f"--data-parallel must be ddp or one of {list(FSDP_MODES)}, got {mode!r}")
    return mode in FSDP_MODES and dist.is_available() and dist.is_initialized()


def wrap_fsdp(model: nn.Module, blocks: Iterable[nn.Module], mode: str, precision: str,
              grad_precision: str | None = None) -> None:
    """Shard each of ``blocks`` and then the whole ``model`` in place with FSDP2 ``fully_shard``.

    Parameters are held in the precision's dtype during compute; gradients are reduced in ``grad_precision``
    (default: the same dtype, as the original). ``hsdp`` shards within a node (LOCAL_WORLD_SIZE ranks) and
    replicates across nodes.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    world = dist.get_world_size()
    device_type = next(model.parameters()).device.type
    if mode == "hsdp":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if world % local:
            raise ConfigError(f"hsdp: world size {world} is not a multiple of LOCAL_WORLD_SIZE {local}")
        mesh = init_device_mesh(device_type, (world // local, local), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(device_type, (world,))
    policy = MixedPrecisionPolicy(param_dtype=storage_dtype(precision),
                                  reduce_dtype=storage_dtype(grad_precision or precision))
    reshard = mode != "sdp"
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)


def wrap_ddp(model: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """DDP when a process group exists (several ranks, or one with GIGATOK_FORCE_DIST=1), the module otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


@contextlib.contextmanager
def no_sync(wrapped: nn.Module, raw: nn.Module, fsdp: bool, last: bool) -> Iterator[None]:
    """Skip the gradient all-reduce inside the block unless ``last`` (the final micro-batch of an accumulation)."""
    if last:
        yield
    elif fsdp:
        raw.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            raw.set_requires_gradient_sync(True)
    elif isinstance(wrapped, nn.parallel.DistributedDataParallel):
        with wrapped.no_sync():
            yield
    else:
        yield


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a DTensor (FSDP2), the tensor itself otherwise."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def weights_finite(model: nn.Module, device: torch.device) -> bool:
    """True on every rank when no rank holds a non-finite parameter (each checks its own shards)."""
    bad = torch.zeros((), device=device)
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        if local.numel() and not bool(torch.isfinite(local).all()):
            bad.fill_(1.0)
            break
    return not any_rank(bad, None, device)


# ----- checkpoint state ----------------------------------------------------------------------------------------------

def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimiser state dicts on the CPU, optimiser state keyed by parameter name (collective)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(model, options=options),
            get_optimizer_state_dict(model, optimizer, options=options))


def load_model_state(model: nn.Module, state_dict: dict, fsdp: bool, source: str, context: str = "") -> None:
    """Strict load of a full state dict into a plain or FSDP2-sharded model; mismatches name the keys."""
    if not fsdp:
        load_state_dict_strict(model, state_dict, source=source, context=context)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    own = set(model.state_dict())
    missing, unexpected = own - set(state_dict), set(state_dict) - own
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {source!r} does not match the model: missing {sorted(missing)[:10]}, "
                              f"unexpected {sorted(unexpected)[:10]}")
    set_model_state_dict(model, dict(state_dict), options=StateDictOptions(full_state_dict=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a name-keyed full optimiser state (:func:`full_state_dicts`) into a plain or sharded model's optimiser.

    ``strict=False``: parameters that never had a gradient (e.g. a distillation head that is switched off) have no
    state in the checkpoint, and none in the live optimiser either.
    """
    import copy

    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, copy.deepcopy(state),
                             options=StateDictOptions(full_state_dict=True, strict=False))


def original_fsdp_optimizer_shards(checkpoint: Path) -> list[Path]:
    """The per-rank optimiser files the original's FSDP trainers write beside ``checkpoints/<step>.pt``
    (``optim_checkpoints/<step>/optimizer.<rank>-of-<world>.pt``); empty when there are none."""
    folder = Path(checkpoint).parent.parent / "optim_checkpoints" / Path(checkpoint).stem
    return sorted(folder.glob("optimizer.*-of-*.pt"))


def check_optimizer_state(ckpt: dict, path: Path, allow_reset: bool, log: Callable[[str], None]) -> bool:
    """Whether ``ckpt`` carries optimiser state to load. Without it, training continues with fresh AdamW moments
    only when ``allow_reset`` (--reset-optimizer) or when the file is a weights-only start; an original FSDP
    checkpoint (moments in per-rank shards that cannot be mapped here) is refused unless ``allow_reset``."""
    if ckpt.get("optimizer"):
        return True
    shards = original_fsdp_optimizer_shards(path)
    if shards and not allow_reset:
        raise CheckpointError(
            f"{path} is an original FSDP checkpoint: its optimiser moments are in per-rank shards ({shards[0].parent}/"
            f"{shards[0].name}, ...) of the original's flat parameters, which this trainer cannot map onto its "
            "parameters. Pass --reset-optimizer to continue from these weights with fresh AdamW moments (the step "
            "count and LR schedule continue), or resume from a checkpoint written by this trainer.")
    log(f"WARNING: {path} has no optimizer state; AdamW restarts from zero moments"
        + (" (--reset-optimizer)" if allow_reset else ""))
    return False


def rng_state(device: torch.device) -> dict:
    """This process's torch / Python / NumPy (and CUDA) generator states, in a weights-only-loadable form."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                       int(np_state[3]), float(np_state[4]))}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ----- one run per folder, workers that die with their launcher ------------------------------------------------------

def lock_experiment(folder: Path, is_main: bool, log: Callable[[str], None]):
    """Rank 0 takes ``folder/.lock`` before anything is written; every rank raises the same ConfigError if it is held
    by a live run. Returns the lock (rank 0) or None."""
    from utils.distributed import gather_objects
    from utils.runlock import ExperimentLock

    lock, error = None, None
    if is_main:
        lock = ExperimentLock(folder, log)
        try:
            lock.acquire()
        except ConfigError as exc:
            lock, error = None, str(exc)
    error = gather_objects(error)[0]
    if error:
        raise ConfigError(error)
    return lock


def clean_stale_temp_files(folders: Iterable[Path], log: Callable[[str], None]) -> None:
    """Remove the temporary files interrupted checkpoint writes left behind (a whole checkpoint each)."""
    from utils.checkpoint import remove_stale_temp_files

    for folder in folders:
        for path in remove_stale_temp_files(folder):
            log(f"removed the temporary file of an interrupted checkpoint write: {path}")


def launcher_watch():
    """A :class:`utils.runlock.ParentWatch` when this process is a torchrun worker, else None."""
    from utils.distributed import launched_by_torchrun
    from utils.runlock import ParentWatch

    return ParentWatch() if launched_by_torchrun() else None


def check_launcher(watch) -> None:
    if watch is not None and not watch.alive():
        raise LauncherGone(f"the launcher (pid {watch.parent}) is gone; stopping this worker (pid {os.getpid()})")


# ----- resume: the same run, or say what changed ---------------------------------------------------------------------

def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def changed_settings(stored: dict, current: dict, allowed: Iterable[str] = ()) -> list[str]:
    """Dotted keys whose value differs between a checkpoint's recorded settings and this launch's, as
    ``key: old -> new`` (keys in ``allowed``, or under an allowed prefix ending in '.', are left out)."""
    allowed = tuple(allowed)
    old, new = _flatten(stored), _flatten(current)
    out = []
    for key in sorted(set(old) | set(new)):
        if key in allowed or key.startswith(tuple(a for a in allowed if a.endswith("."))):
            continue
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            out.append(f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}")
    return out


def check_resume(changes: list[str], allow: bool, path: Path, log: Callable[[str], None]) -> None:
    """A resume that would change the model, the loss or the optimisation is an error naming the keys, unless the
    user accepts it (--allow-config-change); accepted changes are logged."""
    if not changes:
        return
    listing = "\n  ".join(changes)
    if not allow:
        raise ConfigError(f"resuming {path} with settings that change the run:\n  {listing}\nrun with the "
                          "checkpoint's settings, start a new experiment, or pass --allow-config-change to continue "
                          "deliberately (recorded in the log)")
    log(f"WARNING: --allow-config-change: resuming {path} with changed settings:\n  {listing}")


# ----- flags ---------------------------------------------------------------------------------------------------------

def int_or_none(text: str) -> int | None:
    return None if str(text).lower() == "none" else int(text)


def add_checkpoint_flags(group: argparse._ActionsContainer, max_milestone_num: int) -> None:
    """Resume and checkpoint-retention flags (the original's names; its trainers differ only in the milestone cap)."""
    group.add_argument("--auto-resume", action=argparse.BooleanOptionalAction, default=True,
                       help="continue from the newest complete checkpoint of the experiment (as the original); "
                            "--no-auto-resume refuses to start in a folder that has checkpoints")
    group.add_argument("--allow-config-change", action="store_true",
                       help="resume although settings that change the model, loss or optimisation differ from the "
                            "checkpoint's (each change is logged); schedule-only changes never need it")
    group.add_argument("--reset-optimizer", action="store_true",
                       help="resume from a checkpoint without usable optimiser state (e.g. the original's FSDP "
                            "checkpoints, whose moments are per-rank shards) with fresh AdamW moments")
    group.add_argument("--milestone-step", type=int, default=50_000,
                       help="checkpoint retention, as the original: the steps milestone-start + k * milestone-step "
                            "(k >= 0) are milestones, kept up to --max-milestone-num; other checkpoints older than "
                            "the newest milestone are deleted")
    group.add_argument("--milestone-start", type=int, default=50_000, help="step of the first milestone checkpoint")
    group.add_argument("--max-milestone-num", type=int, default=max_milestone_num,
                       help="newest milestone checkpoints kept per checkpoint folder (0: keep none; nothing is "
                            "deleted when --max-none-milestone-num is -1)")
    group.add_argument("--max-none-milestone-num", type=int, default=10,
                       help="non-milestone checkpoints kept (-1 keeps every checkpoint)")


def add_logging_flags(group: argparse._ActionsContainer, wandb_project: str) -> None:
    """Progress bar, TensorBoard and wandb switches (wandb: --wandb, or naming a --wandb-project, as the original)."""
    group.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    group.add_argument("--tensorboard", action="store_true",
                       help="also log the metrics to TensorBoard under the experiment folder (if installed)")
    group.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                       help="also log to wandb (if installed and logged in); on when --wandb-project is given, off "
                            "with the original's --no-wandb")
    group.add_argument("--wandb-project", default=None,
                       help=f"wandb project name (default {wandb_project!r}, the original's)")
    group.set_defaults(wandb_default_project=wandb_project)


def wandb_project(args: argparse.Namespace) -> str | None:
    """The wandb project to log to, or None when wandb is off."""
    enabled = args.wandb if args.wandb is not None else args.wandb_project is not None
    return (args.wandb_project or args.wandb_default_project) if enabled else None


def add_compute_flags(group: argparse._ActionsContainer, precision_default: str | None) -> None:
    """Precision, compile, TF32, device and data-parallel flags, one spelling for both trainers."""
    group.add_argument("--mixed-precision", "--precision", dest="mixed_precision", choices=list(PRECISIONS),
                       default=precision_default,
                       help="autocast dtype of the forward pass (fp16 adds a GradScaler; none = fp32); with FSDP "
                            "also the parameter dtype")
    group.add_argument("--grad-precision", choices=list(PRECISIONS), default=None,
                       help="FSDP gradient reduce dtype (default: the --mixed-precision dtype, as the original)")
    group.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile the model (default: the trainer's, see the description)")
    group.add_argument("--no-tf32", action="store_true", help="keep TF32 off on CUDA (the original turns it on)")
    group.add_argument("--data-parallel", choices=["ddp", *FSDP_MODES], default="ddp", help=DATA_PARALLEL_HELP)
    group.add_argument("--device", default="auto", help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda")


# ----- entry point ---------------------------------------------------------------------------------------------------

def run_trainer(trainer: Any) -> dict:
    """``build()`` + ``train()``, always ``close()`` (and the process group), the error also in the run's log."""
    try:
        trainer.build()
        return trainer.train()
    except (TrainingDiverged, ConfigError, CheckpointError, LauncherGone) as exc:
        trainer.log_error(f"ERROR: {exc}")
        raise
    finally:
        trainer.close()
        cleanup()
