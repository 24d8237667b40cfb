"""The training kit under the trainer base (utils.trainer): the settings every trainer shares, precision names, the
divergence error and exit codes, TF32, autocast, DDP / FSDP2 wrapping, gradient-sync suppression for accumulation, the
finite-weights check, full (unsharded) checkpoints and weights-only starts, optimiser state by parameter name,
parameter groups, the resume rule and check, and the ``main`` wrapper that turns the project's errors into one line
and an exit code.
"""
from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from utils.checkpoint import (
    CheckpointError,
    list_step_checkpoints,
    load_state_dict_strict,
    remove_stale_temp_files,
    save_atomic,
    select_state_dict,
    strip_prefixes,
)
from utils.config import ConfigError
from utils.distributed import any_rank, cleanup
from utils.ema import EMA
from utils.lr import SCHEDULES as LR_SCHEDULES
from utils.settings import setting

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


class Preempted(RuntimeError):
    """A stop signal (SIGTERM / SIGUSR1) arrived: the current step was checkpointed; the run exits with
    ``utils.cli.EXIT_REQUEUE`` so that a scheduler requeues it, and the same command resumes."""


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


def grad_scaler(device: torch.device, amp_dtype: torch.dtype | None, fsdp: bool = False):
    """A GradScaler, enabled for fp16 only; under FSDP2 the sharded one (found-inf agreed across ranks)."""
    if fsdp:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
        return ShardedGradScaler(device=device.type, enabled=amp_dtype == torch.float16)
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


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


def checked(compute: Callable[[], tuple], what: str, device: torch.device, amp_dtype: torch.dtype | None,
            last_checkpoint: Path | None) -> tuple:
    """``compute()`` under autocast, returning its ``(loss, logs, ...)``; every rank stops together (collective) if any
    rank's loss is not finite or its computation raised FloatingPointError, naming ``what`` and the last good
    checkpoint."""
    error, result = None, None
    with autocast(device, amp_dtype):
        try:
            result = compute()
        except FloatingPointError as exc:
            error = str(exc)
    value = None if result is None else result[0]
    bad = torch.zeros((), device=device) if value is None else ~torch.isfinite(value.detach())
    messages = any_rank(bad, error, device)
    if messages:
        raise TrainingDiverged(f"non-finite {what}; stopping. Last good checkpoint: {last_checkpoint or 'none'}.\n  "
                               + "\n  ".join(messages))
    return result


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


def load_full_checkpoint(ckpt: dict, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                         ema: EMA | None, fsdp: bool, entries: tuple[str, ...], reset_optimizer: bool,
                         log: Callable[[str], None]) -> list[str]:
    """Weights (the first of ``entries`` present), EMA (the model's weights when the file has none) and optimiser
    state (position- or name-keyed; see :func:`check_optimizer_state`) from a full checkpoint; returns what it
    loaded."""
    weights = strip_prefixes(select_state_dict(ckpt, str(path), entries))
    load_model_state(model, weights, fsdp, source=str(path))
    loaded = ["model"]
    if ema is not None:
        ema.load_state_dict(strip_prefixes(ckpt["ema"]) if "ema" in ckpt else weights)
        loaded.append("ema" if "ema" in ckpt else "ema (from the model)")
    if check_optimizer_state(ckpt, path, reset_optimizer, log):
        load_optimizer_state(model, optimizer, optimizer_state_by_name(ckpt["optimizer"], optimizer, model))
        loaded.append("optimizer")
    return loaded


def save_full_checkpoint(path: Path, meta: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
                         ema: EMA | None, is_main: bool) -> None:
    """Write a ``.pt`` checkpoint: ``meta`` plus the whole ``model``, ``optimizer`` (keyed by parameter name) and,
    with an EMA, ``ema`` state. Collective: every rank gathers (FSDP2 shards are assembled on the CPU); only rank 0
    keeps the result and writes it, atomically (a reader never sees a partial file)."""
    model_state, optimizer_state = full_state_dicts(model, optimizer)
    ema_state = ema.state_dict(model, keep=is_main) if ema is not None else None
    if is_main:
        save_atomic({**meta, "model": model_state, "optimizer": optimizer_state,
                     **({"ema": ema_state} if ema_state is not None else {})}, path)


def load_weights_only(ckpt: dict, path: Path, entries: tuple[str, ...], model: nn.Module, ema: EMA | None,
                      fsdp: bool, adapt: Callable[[dict], dict]) -> None:
    """A fine-tune's start: the weights of ``ckpt`` (the first of ``entries`` present, wrapper prefixes stripped,
    then made to fit the model by ``adapt``) loaded strictly into ``model`` and, with an EMA, as its average too.
    Nothing else is taken: optimiser, scalers and the step stay fresh."""
    weights = adapt(strip_prefixes(select_state_dict(ckpt, str(path), entries)))
    load_model_state(model, weights, fsdp, source=str(path))
    if ema is not None:
        ema.load_state_dict(weights)


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


# ----- stop signals ---------------------------------------------------------------------------------------------------

class StopSignals:
    """SIGTERM (what SLURM, torchrun and a dying launcher send) and SIGUSR1 (SLURM's usual warning before the time
    limit) only note that a stop was asked for; the training loop then finishes its step, checkpoints it and exits
    with ``utils.cli.EXIT_REQUEUE`` (see :class:`Preempted`)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        def note(signum, _frame):
            self.received = signum
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, note)
            except ValueError:  # not the main thread (a trainer driven from a thread): signals keep their effect
                return

    def requested(self, device: torch.device) -> bool:
        """Whether any rank received a stop signal (collective under torchrun: every rank stops at the same step)."""
        return bool(any_rank(self.received is not None, None, device))

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


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


# ----- the settings every trainer has ---------------------------------------------------------------------------

@dataclass
class TrainSettings:
    """Settings both trainers share (each trainer subclasses it, adding its own and changing defaults).

    Schedule-only settings change how long, how often or where, never what is trained: a resume may change them.
    """
    save_path: str = setting("results", "parent folder of experiments", flags=("--save-path", "--results-dir"),
                             yaml=False, schedule_only=True, group="experiment")
    exp_name: str | None = setting(None, "experiment folder under --save-path", flags=("--sub-exp-dir", "--exp-name"),
                                   yaml=False, schedule_only=True, group="experiment")
    iterations: int | None = setting(None, "total steps T (also the LR schedule's length); or give --epochs",
                                     flags=("--iterations", "--max-steps"), yaml="max_steps", schedule_only=True,
                                     group="length")
    epochs: int | None = setting(None, "T = epochs x steps per epoch (when no --iterations)", schedule_only=True,
                                 group="length")
    early_stop_iter: int | None = setting(None, "stop at this step without changing the schedule ('None' = off)",
                                          yaml=False, schedule_only=True, group="length")
    global_batch_size: int = setting(256, "samples per optimiser step over all ranks and micro-batches",
                                     group="length")
    gradient_accumulation_steps: int = setting(1, "micro-batches per step: per-rank micro-batch = global batch / "
                                                  "(world x steps); the same update with less memory",
                                               group="length")
    global_seed: int = setting(0, "seed of the initial weights, the data order and augmentation, and the per-step "
                                  "random streams", group="length")
    num_workers: int = setting(16, "DataLoader worker processes per rank (capped at the CPU count; 0 loads in the "
                                   "training process)", schedule_only=True, group="length")
    lr: float = setting(1e-4, "base (peak) learning rate", group="optimisation")
    lr_scheduler: str = setting("cosine_v2", "LR schedule over T steps", choices=LR_SCHEDULES, group="optimisation")
    end_lr: float = setting(1e-5, "cosine_v2: final LR", group="optimisation")
    warmup: int = setting(0, "warmup steps: the LR ramps linearly from lr/100 to lr", group="optimisation")
    fract_decay: float = setting(0.2, "wsd: fraction of T spent cooling down (checkpoints then go to cd_records/)",
                                 group="optimisation")
    original_lr_lag: bool = setting(False, "reproduce the original's LR off-by-one (update s uses f(s-1), the first "
                                           "update the base LR)", yaml=False, group="optimisation")
    weight_decay: float = setting(0.0, "AdamW weight decay", group="optimisation")
    beta1: float = setting(0.9, "AdamW beta1", group="optimisation")
    beta2: float = setting(0.999, "AdamW beta2", group="optimisation")
    max_grad_norm: float = setting(0.0, "gradient clipping norm (0: off)", group="optimisation")
    ema: bool = setting(False, "keep an exponential moving average of the weights (saved as 'ema')",
                        group="optimisation")
    ema_decay: float = setting(0.9999, "EMA decay per optimiser step", group="optimisation")
    mixed_precision: str = setting("bf16", "autocast dtype of the forward pass (fp16 adds a GradScaler; none = "
                                           "fp32); with FSDP also the parameter dtype",
                                   flags=("--mixed-precision", "--precision"), choices=list(PRECISIONS),
                                   group="compute")
    grad_precision: str | None = setting(None, "FSDP gradient reduce dtype (None: the --mixed-precision dtype, as "
                                               "the original)", choices=list(PRECISIONS), yaml=False,
                                         schedule_only=True, group="compute")
    compile: bool | None = setting(None, "torch.compile the model (None: the trainer's default)", yaml=False,
                                   schedule_only=True, group="compute")
    tf32: bool = setting(True, "TF32 matmuls on CUDA, as the original (--no-tf32: exact fp32)", yaml=False,
                         schedule_only=True, group="compute")
    data_parallel: str = setting("ddp", DATA_PARALLEL_HELP, choices=["ddp", *FSDP_MODES], yaml=False,
                                 schedule_only=True, group="compute")
    device: str = setting("auto", "auto (CUDA, else Apple MPS, else CPU), cpu, cuda", yaml=False,
                          schedule_only=True, group="compute")
    checkpoint_format: str = setting("full", "full: one %%07d.pt per checkpoint, gathered on rank 0; sharded: a "
                                             "%%07d/ folder in which every rank writes its own shards "
                                             "(torch.distributed.checkpoint; no gather, resumes on any number of "
                                             "processes; for large FSDP runs)", choices=["full", "sharded"],
                                     yaml=False, schedule_only=True, group="checkpoints")
    log_every: int = setting(500, "steps between log lines and metric records (means over the window and ranks)",
                             schedule_only=True, group="checkpoints")
    ckpt_every: int = setting(5000, "steps between checkpoints", schedule_only=True, group="checkpoints")
    final_checkpoint: bool = setting(True, "also save at the stop step when it is off the --ckpt-every cadence "
                                           "(--no-final-checkpoint: as the original tokenizer trainer)",
                                     yaml=False, schedule_only=True, group="checkpoints")
    auto_resume: bool = setting(True, "continue from the newest complete checkpoint of the experiment (as the "
                                      "original); --no-auto-resume refuses a folder that has checkpoints",
                                yaml=False, schedule_only=True, group="checkpoints")
    allow_config_change: bool = setting(False, "resume although settings that change what is trained differ from "
                                               "the checkpoint's (each change is logged)",
                                        yaml=False, schedule_only=True, group="checkpoints")
    reset_optimizer: bool = setting(False, "resume from a checkpoint without usable optimiser state (e.g. the "
                                           "original's FSDP checkpoints) with fresh AdamW moments",
                                    yaml=False, schedule_only=True, group="checkpoints")
    milestone_step: int = setting(50_000, "retention: steps milestone-start + k * milestone-step are milestones",
                                  yaml=False, schedule_only=True, group="checkpoints")
    milestone_start: int = setting(50_000, "step of the first milestone checkpoint", yaml=False,
                                   schedule_only=True, group="checkpoints")
    max_milestone_num: int = setting(30, "newest milestone checkpoints kept (0: none; nothing is deleted when "
                                         "--max-none-milestone-num is -1)", yaml=False, schedule_only=True,
                                     group="checkpoints")
    max_none_milestone_num: int = setting(10, "non-milestone checkpoints kept (-1 keeps every checkpoint)",
                                          yaml=False, schedule_only=True, group="checkpoints")
    progress: bool = setting(True, "tqdm progress bar (--no-progress: off)", yaml=False, schedule_only=True,
                             group="checkpoints")
    tensorboard: bool = setting(False, "also log the metrics to TensorBoard (if installed)", yaml=False,
                                schedule_only=True, group="checkpoints")
    wandb: bool | None = setting(None, "also log to wandb (if installed and logged in); on when --wandb-project "
                                       "is given", yaml=False, schedule_only=True, group="checkpoints")
    wandb_project: str | None = setting(None, "wandb project name (None: the original's for this trainer)",
                                        yaml=False, schedule_only=True, group="checkpoints")

    def __post_init__(self) -> None:
        self.num_workers = min(self.num_workers, os.cpu_count() or 1)
        for name in ("global_batch_size", "gradient_accumulation_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.fract_decay <= 1.0:
            raise ConfigError(f"--fract-decay must lie in [0, 1], got {self.fract_decay}")
        autocast_dtype(self.mixed_precision)


SETTING_GROUPS = {"experiment": "data and experiment", "length": "length, batch and seed",
                  "optimisation": "optimisation", "compute": "compute and parallelism",
                  "checkpoints": "checkpoints and logging"}


def wandb_project(settings: Any, default_project: str | None = None) -> str | None:
    """The wandb project to log to, or None when wandb is off (on with --wandb, or when a project is named)."""
    enabled = settings.wandb if settings.wandb is not None else settings.wandb_project is not None
    return (settings.wandb_project or default_project or getattr(settings, "default_wandb_project", None)) \
        if enabled else None


# ----- parameter groups, optimiser state and the resume rule ---------------------------------------------------------

def param_groups(model: nn.Module, weight_decay: float, no_decay: Callable[[str, torch.Tensor], bool]) -> list[dict]:
    """The parameters with weight decay, then (when any) those for which ``no_decay(name, parameter)`` holds."""
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if no_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}] + \
        ([{"params": plain, "weight_decay": 0.0}] if plain else [])


def optimizer_state_by_name(state: dict, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict:
    """A saved optimiser state keyed by parameter name (:func:`full_state_dicts`), as it is; one keyed by parameter
    position (``optimizer.state_dict()``, the original's DDP checkpoints) mapped to names through ``optimizer``'s
    groups, which must have the same sizes as the saved ones."""
    groups = state.get("param_groups") or []
    by_position = all(isinstance(p, int) for g in groups for p in g["params"]) and \
        all(isinstance(k, int) for k in state.get("state", {}))
    if not groups or not by_position:
        return state
    name_of = {id(p): n for n, p in model.named_parameters()}
    names = [[name_of[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    if [len(g["params"]) for g in groups] != [len(n) for n in names]:
        raise CheckpointError("optimizer state does not match the model's parameter groups "
                              f"({[len(g['params']) for g in groups]} vs {[len(n) for n in names]})")
    position_to_name = {i: n for g, group_names in zip(groups, names, strict=True)
                        for i, n in zip(g["params"], group_names, strict=True)}
    return {"state": {position_to_name[i]: s for i, s in state["state"].items()},
            "param_groups": [{**g, "params": list(n)} for g, n in zip(groups, names, strict=True)]}


def resume_candidates(constant_dir: Path, cooldown_dir: Path | None, hold: int | None) -> list[Path]:
    """Checkpoints to resume from, best first, by the original's ``wsd_find_newest_ckpt`` rule (other schedules: the
    newest): once the constant phase has reached the hold step, continue this T's cool-down if it has checkpoints,
    else branch from the largest constant checkpoint <= hold; otherwise continue from the newest constant one.
    Older checkpoints of the same phase follow (used when the best one cannot be read)."""
    constant = [p for _, p in list_step_checkpoints(constant_dir)]
    if not constant:
        return []
    if cooldown_dir is not None and hold is not None and int(constant[-1].stem) >= hold:
        cooldown = [p for _, p in list_step_checkpoints(cooldown_dir)]
        before = [p for p in constant if int(p.stem) <= hold]
        if not cooldown and not before:
            raise CheckpointError(f"{constant_dir} has no checkpoint at or before the cool-down start (step {hold}) "
                                  "to branch the cool-down from")
        return cooldown[::-1] + before[::-1]
    return constant[::-1]


# ----- entry point ---------------------------------------------------------------------------------------------------

def run_trainer(trainer: Any) -> dict:
    """``build()`` + ``train()``, always ``close()`` (and the process group), the error also in the run's log."""
    try:
        trainer.build()
        return trainer.train()
    except (TrainingDiverged, ConfigError, CheckpointError, LauncherGone) as exc:
        trainer.log(f"ERROR: {exc}")
        raise
    finally:
        trainer.close()
        cleanup()
