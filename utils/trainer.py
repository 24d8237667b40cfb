"""The trainer base both trainers (tokenizer.train, autoregressive.train_c2i) subclass.

The base owns what is the same for every model: the process group and device, the experiment folder and its lock,
the data order (:mod:`utils.train_data`: step-indexed batches and per-step reseeding, so a checkpoint holds no sampler
or RNG state), wrapping (DDP / FSDP2, compile, EMA), the loop with gradient accumulation, logging windows, divergence
checks, checkpoints (atomic, pruned, WSD cool-down folders) and resume, curves, and a clean close. A trainer
implements ``build_data``, ``build_models``, ``build_optimizers``, ``train_step`` and ``fsdp_units``, and overrides
the other hooks below where it has something of its own.

Contract: ``Trainer(settings)`` only stores the settings; ``build()`` sets everything up and resumes; ``train()``
runs to the stop step and returns a result dict; ``close()`` releases logs and the lock (also after a failure).
"""
from __future__ import annotations

import dataclasses
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from utils import sharded_checkpoint as sharded
from utils import training
from utils.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint_file, prune_step_checkpoints
from utils.cli import EXIT_REQUEUE
from utils.config import ConfigError
from utils.distributed import barrier, broadcast_module, gather_objects, init_distributed
from utils.ema import EMA
from utils.logging import RunLog, WindowMeter, record_resume
from utils.lr import LRSchedule, set_lr
from utils.plot_run import plot_run_quietly
from utils.settings import as_record, resume_changes
from utils.train_data import StepBatchSampler, collate_samples, data_order_changes, mix_seed


class Trainer:
    kind = "model"  # recorded in checkpoints ("tokenizer", "gpt")
    loss_key = "loss"  # the logged value whose window mean must stay finite
    weights_entries: tuple[str, ...] = ("model",)  # where a checkpoint's weights are read from, in order
    find_unused_parameters = False  # DDP: some parameters get no gradient in some steps
    compile_on_cuda_by_default = False

    def __init__(self, settings: Any):
        self.settings = settings
        self.run_log: RunLog | None = None
        self.lock = None
        self.last_checkpoint: Path | None = None
        self.window_extras: dict[str, Any] = {}  # last values logged as they are (e.g. a second LR)
        self.stop_signals = training.StopSignals()  # SIGTERM / SIGUSR1: checkpoint the step, exit for a requeue

    # ----- what a trainer implements (the first five), and may override ------------------------------------------
    def build_data(self) -> torch.utils.data.Dataset:  # keyed by (index, epoch)
        raise NotImplementedError

    def build_models(self) -> nn.Module:  # the trained module, unwrapped
        raise NotImplementedError

    def build_optimizers(self) -> None:  # sets self.optimizer (and any other optimiser the step uses)
        raise NotImplementedError

    def train_step(self, step: int, micro_batches: list[tuple]) -> dict[str, Any]:  # the values to log
        raise NotImplementedError

    def fsdp_units(self, model: nn.Module) -> list[nn.Module]:  # FSDP2 units (transformer blocks)
        raise NotImplementedError

    def experiment_name(self) -> str:
        if not self.settings.exp_name:
            raise ConfigError("give the experiment folder name (--sub-exp-dir / --exp-name)")
        return self.settings.exp_name

    def model_record(self) -> dict:  # checkpoint entries that describe the model (its config)
        return {}

    def extra_state(self) -> dict:  # more checkpoint entries; called on every rank (it may gather)
        return {}

    def load_extra_state(self, ckpt: dict, path: Path, exact: bool) -> list[str]:  # returns what was loaded
        return []

    def initial_checkpoint(self) -> tuple[Path, bool, bool] | None:
        """What a new experiment starts from: (checkpoint, whether the run continues at its step, whether only its
        weights are taken: a fine-tune with a fresh discriminator and optimisers)."""
        return None

    def adapt_weights(self, weights: dict) -> dict:  # a fine-tune's starting weights, made to fit the model
        return weights

    def config_changes(self, ckpt: dict) -> list[str]:  # resume differences outside the settings
        return []

    def version0_settings(self, ckpt: dict) -> dict:  # the settings a checkpoint of the version-0 layout recorded
        stored = ckpt.get("args")
        return dict(vars(stored) if hasattr(stored, "__dict__") else (stored or {}))

    def describe_window(self, step: int, record: dict) -> str:
        return f"(step={step:07d}) Train Loss: {record[self.loss_key]:.4f}, lr: {record['lr']:.4e}"

    def record_inputs(self, folder: Path) -> None:  # rank 0, when a log folder opens: files describing the run
        pass

    def lr_at(self, step: int) -> float:
        return self.schedule.lr_for_update(step, lag=self.settings.original_lr_lag)

    # ----- logging ------------------------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        """Rank-0 log line; lines from before the log folder is known are kept and written when it opens."""
        if self.run_log is not None:
            self.run_log.info(msg)

    # ----- set-up -------------------------------------------------------------------------------------------------
    def build(self) -> None:
        settings = self.settings
        self.dist = init_distributed(settings.device)
        self.device = self.dist.device
        self.run_log = RunLog(self.dist.is_main, name=f"gigatok.train.{self.kind}")
        self.stop_signals.install()
        self.settings = settings = dataclasses.replace(settings, device=str(self.device))  # recorded: not "auto"
        training.configure_tf32(self.device, settings.tf32)
        self.amp_dtype = training.autocast_dtype(settings.mixed_precision)
        self.experiment_dir = Path(settings.save_path) / self.experiment_name()
        if self.dist.is_main:
            self.experiment_dir.mkdir(parents=True, exist_ok=True)
        self.lock = training.lock_experiment(self.experiment_dir, self.dist.is_main, print)
        self.watch = training.launcher_watch()
        self.dataset = self.build_data()
        self._plan_steps()
        if self.dist.is_main:
            training.clean_stale_temp_files(self._checkpoint_folders(), print)
        torch.manual_seed(settings.global_seed)  # the same initial weights on every rank, for any world size
        self.raw_model = self.build_models().to(self.device)
        self.model = self._wrap(self.raw_model)
        self.ema = EMA(self.raw_model, settings.ema_decay) if settings.ema else None
        self.build_optimizers()
        self.scaler = training.grad_scaler(self.device, self.amp_dtype, self.fsdp)
        self.start_step = self._resume()
        self._open_logs(self.start_step)
        mode = (settings.data_parallel if self.fsdp else "ddp") if self.dist.distributed else "single process"
        self.log(" ".join(sys.argv))
        self.log(f"{self.kind}: {sum(p.numel() for p in self.raw_model.parameters()):,} parameters; {mode} on "
                 f"{self.dist.world_size} x {self.device}; precision {settings.mixed_precision}; compile "
                 f"{self.compiled}")
        cooldown = f", cool-down from step {self.hold}" if self.hold is not None else ""
        self.log(f"{len(self.dataset):,} samples, {self.steps_per_epoch} steps per epoch, global batch "
                 f"{settings.global_batch_size} = {self.dist.world_size} ranks x {self.micro_batch} x "
                 f"{settings.gradient_accumulation_steps} accumulation; steps {self.start_step} -> {self.stop_step} "
                 f"of T = {self.total_steps} ({self.schedule.name} schedule{cooldown}); experiment "
                 f"{self.experiment_dir}")

    def _plan_steps(self) -> None:
        settings, world = self.settings, self.dist.world_size
        batch, accum = settings.global_batch_size, settings.gradient_accumulation_steps
        if batch < 1 or accum < 1 or batch % (world * accum):
            raise ConfigError(f"the global batch {batch} must be a positive multiple of the world size {world} x "
                              f"the gradient accumulation steps {accum}")
        self.micro_batch = batch // (world * accum)
        self.steps_per_epoch = len(self.dataset) // batch
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{len(self.dataset)} samples cannot fill one global batch of {batch}")
        total = settings.iterations
        if total is None:
            if settings.epochs is None:
                raise ConfigError("give --iterations (or --max-steps) or --epochs")
            total = settings.epochs * self.steps_per_epoch
        self.total_steps = total
        self.stop_step = min(total, settings.early_stop_iter) if settings.early_stop_iter is not None else total
        self.schedule = LRSchedule(settings.lr_scheduler, settings.lr, total, warmup=settings.warmup,
                                   end_lr=settings.end_lr, fract_decay=settings.fract_decay)
        self.cooldown_dir, self.hold = None, None
        if self.schedule.name == "wsd":  # the original's folder rule: int(T * (1 - f)); the LR decays from T - int(f T)
            self.cooldown_dir = (self.experiment_dir / "cd_records"
                                 / f"cd_fract_{settings.fract_decay}_to_{total:07d}")
            self.hold = int(total * (1 - settings.fract_decay))

    def _wrap(self, model: nn.Module) -> nn.Module:
        settings = self.settings
        self.fsdp = training.uses_fsdp(settings.data_parallel)
        self.compiled = settings.compile if settings.compile is not None else \
            (self.compile_on_cuda_by_default and self.device.type == "cuda")
        if self.fsdp:
            broadcast_module(model)  # FSDP2 has no sync_module_states: every shard starts from rank 0's weights
            training.wrap_fsdp(model, self.fsdp_units(model), settings.data_parallel, settings.mixed_precision,
                               settings.grad_precision)
            wrapped = torch.compile(model) if self.compiled else model
        else:
            wrapped = training.wrap_ddp(torch.compile(model) if self.compiled else model, self.device,
                                        find_unused_parameters=self.find_unused_parameters)
        wrapped.train()
        return wrapped

    # ----- folders ------------------------------------------------------------------------------------------------
    def in_cooldown(self, completed_steps: int) -> bool:
        """Checkpoints and logs after ``completed_steps`` belong to the cool-down folder (the original: the checkpoint
        at exactly ``hold`` stays in ``checkpoints/``)."""
        return self.hold is not None and completed_steps > self.hold

    def checkpoint_dir(self, completed_steps: int) -> Path:
        folder = self.cooldown_dir if self.in_cooldown(completed_steps) else self.experiment_dir
        return folder / "checkpoints"

    def _checkpoint_folders(self) -> list[Path]:
        return [self.experiment_dir / "checkpoints", *((self.cooldown_dir / "checkpoints",) if self.cooldown_dir
                                                       else ())]

    def _open_logs(self, completed_steps: int) -> None:
        folder = self.cooldown_dir if self.in_cooldown(completed_steps) else self.experiment_dir
        settings = self.settings
        run_name = self.experiment_dir.name + (folder.name if folder != self.experiment_dir else "")
        if self.run_log.open(folder, completed_steps, as_record(settings), settings.tensorboard,
                             training.wandb_project(settings), run_name) and self.dist.is_main:
            self.record_inputs(folder)

    # ----- checkpoints --------------------------------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> Path:
        """``%07d.pt`` (the full state, gathered on rank 0) or, with ``--checkpoint-format sharded``, a ``%07d/``
        folder in which every rank writes its own shards (:mod:`utils.sharded_checkpoint`). Collective."""
        if not training.weights_finite(self.raw_model, self.device):
            raise training.TrainingDiverged(f"non-finite weights at step {step}: checkpoint not written; last good "
                                            f"checkpoint: {self.last_checkpoint or 'none'}")
        settings, folder, main = self.settings, self.checkpoint_dir(step), self.dist.is_main
        meta = {"format_version": FORMAT_VERSION, "kind": self.kind, "steps": step, "args": as_record(settings),
                **self.model_record(), "scaler": self.scaler.state_dict(), **self.extra_state(),
                "trainer_state": {"epoch": step // self.steps_per_epoch, "steps_per_epoch": self.steps_per_epoch,
                                  "dataset_len": len(self.dataset), "world_size": self.dist.world_size,
                                  "global_batch_size": settings.global_batch_size, "seed": settings.global_seed,
                                  "total_steps": self.total_steps}}
        if settings.checkpoint_format == "sharded":
            path = sharded.save_sharded(folder / f"{step:07d}", sharded.training_state(
                self.raw_model, self.optimizer, self.ema.shadow if self.ema is not None else None), meta, main)
        else:
            path = folder / f"{step:07d}.pt"
            training.save_full_checkpoint(path, meta, self.raw_model, self.optimizer, self.ema, main)
        if main:
            self.log(f"Saved checkpoint to {path}")
            if not self.in_cooldown(step):  # as the original, a cool-down keeps every checkpoint
                for removed in prune_step_checkpoints(folder, settings.milestone_step, settings.milestone_start,
                                                      settings.max_milestone_num, settings.max_none_milestone_num):
                    self.log(f"removed old checkpoint {removed}")
            if self.run_log.folder is not None:
                plot_run_quietly(self.run_log.folder, self.log)  # curves.png beside metrics.jsonl; never fatal
        barrier()
        self.last_checkpoint = path
        return path

    def _resume(self) -> int:
        """Continue from the checkpoint the original's rule picks (an unreadable one is skipped for the next older),
        or start from ``initial_checkpoint()``, or from scratch; returns the step to continue from."""
        settings = self.settings
        cooldown = self.cooldown_dir / "checkpoints" if self.cooldown_dir else None
        candidates = training.resume_candidates(self.experiment_dir / "checkpoints", cooldown, self.hold)
        if candidates and not settings.auto_resume:
            raise ConfigError(f"{self.experiment_dir} already has checkpoints ({candidates[0]}); remove "
                              "--no-auto-resume to continue it, or choose another experiment name")
        for path in candidates:
            try:
                ckpt = sharded.read_meta(path) if sharded.is_sharded_checkpoint(path) else \
                    load_checkpoint_file(path, mmap=True)
            except CheckpointError as exc:
                self.log(f"WARNING: skipping unreadable checkpoint: {exc}")
                continue
            changes = resume_changes(ckpt.get("args") or {}, settings) if ckpt.get("format_version", 0) >= 1 else \
                resume_changes(self.version0_settings(ckpt), settings, compare_missing=False)
            training.check_resume(changes + self.config_changes(ckpt), settings.allow_config_change, path, self.log)
            steps = self._load(ckpt, path, exact=True)
            self.last_checkpoint = path
            if self.dist.is_main:  # marked on the curves (utils.plot_run)
                (self.experiment_dir / "message.txt").write_text(f"Resume training from checkpoint: {path}\n")
                record_resume(self.cooldown_dir if self.in_cooldown(steps) else self.experiment_dir, steps, path)
            self.log(f"Resume training from checkpoint: {path}")
            return steps
        start = self.initial_checkpoint()
        if start is None:
            return 0
        path, exact, weights_only = start
        ckpt = load_checkpoint_file(path, mmap=True)
        if not weights_only:
            return self._load(ckpt, path, exact=exact)
        training.load_weights_only(ckpt, path, self.weights_entries, self.raw_model, self.ema, self.fsdp,
                                   self.adapt_weights)
        self.log(f"fine-tuning from {path}: loaded the model weights{' (also as the EMA)' if self.ema else ''}; "
                 "new: optimiser state, step 0" + (", discriminator" if self.kind == "tokenizer" else ""))
        return 0

    def _load(self, ckpt: dict, path: Path, exact: bool) -> int:
        settings = self.settings
        if sharded.is_sharded_checkpoint(path):
            loaded = sharded.load_training_state(path, ckpt, self.raw_model, self.optimizer, self.ema)
        else:
            loaded = training.load_full_checkpoint(ckpt, path, self.raw_model, self.optimizer, self.ema, self.fsdp,
                                                   self.weights_entries, settings.reset_optimizer, self.log)
        if exact and ckpt.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        loaded += self.load_extra_state(ckpt, path, exact)
        steps = int(ckpt.get("steps", 0)) if exact else 0
        changed = data_order_changes(ckpt.get("trainer_state") or {}, len(self.dataset), settings.global_batch_size,
                                     settings.global_seed)
        if changed and exact and steps:
            self.log(f"WARNING: data settings changed since the checkpoint ({', '.join(changed)}): the data order "
                     "after the resume differs from the uninterrupted run's")
        self.log(f"loaded {', '.join(loaded)} from {path}; continuing at step {steps}")
        return steps

    # ----- preemption --------------------------------------------------------------------------------------------
    def _stop_for_requeue(self, done: int) -> None:
        if self.last_checkpoint is None or int(Path(self.last_checkpoint).stem) != done:
            self.save_checkpoint(done)
        received = self.stop_signals.received
        name = signal.Signals(received).name if received else "a stop signal (another rank)"
        message = (f"{name} at step {done} of {self.stop_step}: checkpoint {self.last_checkpoint} written; run the "
                   f"same command again to continue (exit code {EXIT_REQUEUE} asks the scheduler to requeue)")
        self.log(f"preempted: {message}")
        raise training.Preempted(message)

    # ----- the loop -----------------------------------------------------------------------------------------------
    def reseed(self, step: int) -> None:
        """Every model-side random stream of ``step`` is a function of (seed, rank, step)."""
        seed = mix_seed(self.settings.global_seed, self.dist.rank, step)
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)

    def train(self) -> dict:
        settings, start = self.settings, self.start_step
        result = {"start_step": start, "stop_step": self.stop_step}
        if start >= self.stop_step:
            self.log(f"nothing to do: already at step {start} (stop step {self.stop_step})")
            return {**result, "steps": start, "checkpoint": str(self.last_checkpoint or "") or None}
        accum = settings.gradient_accumulation_steps
        sampler = StepBatchSampler(len(self.dataset), settings.global_batch_size, self.dist.rank,
                                   self.dist.world_size, settings.global_seed, start_step=start,
                                   end_step=self.stop_step, micro_batches=accum)
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, num_workers=settings.num_workers,
                                             collate_fn=collate_samples, pin_memory=self.device.type == "cuda")
        batches = iter(loader)
        meter, skipped, last_record = WindowMeter(), [], {}
        with tqdm(total=self.stop_step, initial=start, disable=not self.dist.is_main or not settings.progress,
                  desc="train", dynamic_ncols=True) as bar:  # closed also when a step raises
            window_start, window_steps = time.time(), 0
            for step in range(start, self.stop_step):
                training.check_launcher(self.watch)
                micro_batches = [next(batches) for _ in range(accum)]
                skipped += [name for batch in micro_batches for name in batch[3]]
                self.reseed(step)
                lr = set_lr(self.optimizer, self.lr_at(step))
                self.optimizer.zero_grad(set_to_none=True)
                meter.add(self.train_step(step, micro_batches))
                done, window_steps = step + 1, window_steps + 1
                bar.update(1)
                if done % settings.log_every == 0 or done == self.stop_step:
                    last_record = self._log_window(done, meter, lr, window_steps, time.time() - window_start, skipped)
                    bar.set_postfix(loss=f"{last_record[self.loss_key]:.4f}")
                    skipped, window_start, window_steps = [], time.time(), 0
                if (settings.ckpt_every > 0 and done % settings.ckpt_every == 0) or (
                        done == self.stop_step and settings.final_checkpoint):
                    self.save_checkpoint(done)
                if done < self.stop_step and self.stop_signals.requested(self.device):
                    self._stop_for_requeue(done)
        self.log(f"Done! {self.stop_step} steps; last checkpoint {self.last_checkpoint}")
        return {**result, "steps": self.stop_step, "checkpoint": str(self.last_checkpoint or "") or None,
                "last_log": last_record}

    def _log_window(self, done: int, meter: WindowMeter, lr: float, steps: int, elapsed: float,
                    skipped: list[str]) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        means = meter.mean(self.device)
        meter.reset()
        self._open_logs(done)
        if not np.isfinite(means.get(self.loss_key, 0.0)):
            raise training.TrainingDiverged(f"non-finite training loss at step {done}; last good checkpoint: "
                                            f"{self.last_checkpoint or 'none'}")
        per_sec = steps / max(elapsed, 1e-9)
        record = {**means, "lr": lr, **self.window_extras, "epoch": (done - 1) // self.steps_per_epoch,
                  "steps_per_sec": per_sec, "images_per_sec": per_sec * self.settings.global_batch_size}
        if self.device.type == "cuda":
            record["max_memory_GiB"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
        every_skipped = [name for part in gather_objects(skipped) for name in part]
        if every_skipped:
            record["skipped_images"] = every_skipped
            for name in every_skipped:
                self.log(f"skipped unreadable image {name}")
        self.run_log.metrics.log(record, done)
        self.log(self.describe_window(done, record))
        return record

    def close(self) -> None:
        self.stop_signals.restore()
        if self.run_log is not None:
            self.run_log.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None
