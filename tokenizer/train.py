"""Train a GigaTok VQ tokenizer: one process, torchrun DDP, or torchrun FSDP2 (``--data-parallel fsdp``).

    python -m tokenizer.train --data-path DATA --model-config configs/vq/VQ_tiny32.yaml --iterations 1000 ...
    GPUS=8 bash scripts/train_vq.sh ...           # DDP (scripts/train_vq_fsdp.sh adds --data-parallel fsdp)

One iteration = one generator update (from ``loss.gen_start`` on) + one discriminator update (from
``loss.disc_start`` on), in the original's order. Outputs under ``<save-path>/<exp-name>/``: ``checkpoints/%07d.pt``
(model, optimizer, discriminator, optimizer_disc, steps, args, config, ema?, scalers, per-rank RNG and data
position), ``config.yaml`` (resolved), ``log.txt`` and ``metrics.jsonl`` (rank 0).

Resume is exact: a run killed after checkpoint k and restarted (auto-resume is on by default, as the original)
repeats the uninterrupted run's per-step losses, because the data order and every augmentation are functions of
(seed, epoch, rank, position), the model-side RNGs are checkpointed per rank, and the LR is a function of the step.
A non-finite loss or gradient stops the run (exit code 3) naming the step and the terms; no checkpoint with
non-finite weights is ever written. ``--compile`` is off unless given.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from tokenizer import build_tokenizer, read_tokenizer_config, train_options
from tokenizer.losses import build_loss
from tokenizer.train_data import AugmentedImageFolder, ResumableDistributedSampler, collate_train, micro_batches
from tokenizer.train_options import resolve_settings
from utils import training as kit
from utils.checkpoint import (
    CheckpointError,
    list_step_checkpoints,
    load_checkpoint_file,
    prune_step_checkpoints,
    resolve_checkpoint,
    save_atomic,
    select_state_dict,
    strip_prefixes,
)
from utils.config import ConfigError, as_float, save_config, to_plain
from utils.distributed import (
    DistInfo,
    allreduce_grads,
    any_rank,
    barrier,
    broadcast_module,
    gather_objects,
    init_distributed,
    is_distributed,
)
from utils.ema import EMA
from utils.logging import MetricWriter, WindowMeter, close_logger, create_logger, record_resume
from utils.lr import LRSchedule, set_lr
from utils.plot_run import plot_run_quietly

# config keys a resume may change: they set only how long and how often, not what is trained
SCHEDULE_ONLY = ("trainer.max_steps", "trainer.epochs", "trainer.ckpt_every", "trainer.log_every",
                 "trainer.num_workers")

# re-exported for callers of the original module layout
EXIT_DIVERGED, TrainingDiverged = kit.EXIT_DIVERGED, kit.TrainingDiverged


def parse_args(argv=None) -> argparse.Namespace:
    return train_options.parse_args(argv, description=__doc__)


def fsdp_blocks(model: nn.Module) -> list[nn.Module]:
    """Transformer layers wrapped as their own FSDP units (encoder and decoder stacks; 1D and 2D models)."""
    return [*model.vit_encoder.transformer, *model.vit_decoder.transformer]


def param_groups(model: nn.Module, weight_decay: float, exclude: list[str]) -> list[dict]:
    """One group with every parameter (DDP original), or names containing any of ``exclude`` without decay
    (the FSDP original excludes "norm")."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if any(s in name for s in exclude) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def list_checkpoints(exp_dir: Path) -> list[Path]:
    """Complete checkpoints (``%07d.pt``), oldest first, including the WSD cool-down folders."""
    found = []
    for folder in [exp_dir / "checkpoints", *sorted((exp_dir / "cd_records").glob("*/checkpoints"))]:
        found += list_step_checkpoints(folder)
    return [p for _, p in sorted(found, key=lambda sp: (sp[0], str(sp[1])))]


class Trainer:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.logger = self.metrics = self.lock = None
        self.start_step = 0
        self.last_checkpoint: Path | None = None
        self._restore_rng: dict | None = None

    def log(self, msg: str) -> None:
        if self.logger is not None:
            self.logger.info(msg)

    def log_error(self, msg: str) -> None:
        if self.logger is not None:
            self.logger.error(msg)

    # ----- set-up -----------------------------------------------------------------------------------------------
    def build(self) -> None:
        a = self.args
        self.dist: DistInfo = init_distributed(a.device)
        a.device = str(self.dist.device)  # checkpoints record the device used, not "auto"
        self.device = self.dist.device
        self.cfg = read_tokenizer_config(a.model_config, a.config_overrides)
        self.s = s = resolve_settings(a, self.cfg, self.dist.world_size)
        self.exp_dir = s.exp_dir
        if self.dist.is_main:
            self.exp_dir.mkdir(parents=True, exist_ok=True)
        self.lock = kit.lock_experiment(self.exp_dir, self.dist.is_main, print)
        self.watch = kit.launcher_watch()
        if self.dist.is_main:
            kit.clean_stale_temp_files([self.exp_dir / "checkpoints",
                                        *(self.exp_dir / "cd_records").glob("*/checkpoints")], print)
        self.logger = create_logger(self.exp_dir, self.dist.is_main)
        kit.configure_tf32(self.device, not a.no_tf32)
        # seeds as the original: per rank, before the model is built (ranks then receive rank 0's weights)
        rank_seed = s.seed * self.dist.world_size + self.dist.rank
        torch.manual_seed(rank_seed)
        np.random.seed(rank_seed % 2 ** 32)
        random.seed(rank_seed)
        self._build_data()
        self._build_model()
        self._build_optim()
        self.metrics = MetricWriter(self.exp_dir, self.dist.is_main, tensorboard=a.tensorboard,
                                    wandb_project=kit.wandb_project(a), run_name=self.exp_dir.name,
                                    config=to_plain(self.cfg), logger=self.logger)
        self._resume()

    def _build_data(self) -> None:
        s, d = self.s, self.dist
        self.dataset = AugmentedImageFolder(self.args.data_path, s.image_size)
        self.sampler = ResumableDistributedSampler(self.dataset, d.world_size, d.rank, seed=s.seed)
        # the loader gets its own generator so creating an iterator never draws from the global torch RNG
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=s.micro_batch, sampler=self.sampler, num_workers=s.num_workers,
            pin_memory=self.device.type == "cuda", drop_last=True, collate_fn=collate_train,
            persistent_workers=s.num_workers > 0, generator=torch.Generator().manual_seed(s.seed))

    def _build_model(self) -> None:
        a, s, cfg = self.args, self.s, self.cfg
        model = build_tokenizer(cfg).to(self.device)
        if model.image_size != s.image_size:
            raise ConfigError(f"--image-size {s.image_size} does not match the model's {model.image_size}")
        self.raw_model = model
        self.loss = build_loss(cfg, pretrained=not a.random_loss_nets, device=self.device,
                               teacher_weights=a.teacher_weights, lpips_vgg_path=a.lpips_vgg_path,
                               dino_disc_weights=a.dino_disc_weights)
        broadcast_module(self.loss)  # discriminator init (and random-weight loss nets) identical on every rank
        self.distill = bool((cfg.get("trainer") or {}).get("distill_loss", False))
        self.amp_dtype = kit.autocast_dtype(s.precision)
        self.fsdp = kit.uses_fsdp(a.data_parallel)
        if self.fsdp:
            broadcast_module(model)  # FSDP2 has no sync_module_states: start every shard from rank 0's init
            kit.wrap_fsdp(model, fsdp_blocks(model), a.data_parallel, s.precision, a.grad_precision)
            self.model = torch.compile(model) if a.compile else model
        else:
            self.model = kit.wrap_ddp(torch.compile(model) if a.compile else model, self.device,
                                      find_unused_parameters=True)
        self.model.train()
        self.loss.train()
        self.ema = EMA(self.raw_model, s.ema_decay) if s.ema else None  # after wrapping: rank 0's weights
        n_params = sum(p.numel() for p in self.raw_model.parameters())
        n_disc = sum(p.numel() for p in self.loss.discriminator.parameters())
        mode = (a.data_parallel if self.fsdp else "ddp") if self.dist.distributed else "single process"
        self.log(f"model {cfg.model.model_cls} from {a.model_config}: {n_params / 1e6:.2f}M parameters; "
                 f"discriminator {n_disc / 1e6:.2f}M; {mode} on {self.dist.world_size} x {self.device}; "
                 f"precision {s.precision}")

    def _build_optim(self) -> None:
        a, s, tr = self.args, self.s, self.cfg.get("trainer") or {}
        lr = as_float(tr.get("lr", 1e-4), "trainer.lr")
        wd = as_float(tr.get("weight_decay", 0.0), "trainer.weight_decay")
        betas = (float(tr.get("beta1", 0.9)), float(tr.get("beta2", 0.999)))
        optimizers = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam}
        name = tr.get("optimizer", "AdamW")
        if name not in optimizers:
            raise ConfigError(f"trainer.optimizer must be AdamW or Adam, got {name!r}")
        exclude = tr.get("weight_decay_exclude")
        exclude = list(exclude) if exclude is not None else (["norm"] if self.fsdp else [])
        fused = {"fused": True} if (self.fsdp and self.device.type == "cuda") else {}
        self.opt = optimizers[name](param_groups(self.raw_model, wd, exclude), lr=lr, betas=betas, weight_decay=wd,
                                    **fused)
        self.opt_disc = optimizers[name](self.loss.discriminator.parameters(), lr=lr, betas=betas, weight_decay=wd)
        self.max_grad_norm = float(tr.get("max_grad_norm", 0.0) or 0.0)
        self.schedule = LRSchedule(
            tr.get("lr_scheduler", "cosine_v2"), lr, s.total_steps,
            warmup=a.warmup if a.warmup is not None else int(tr.get("warmup", 0) or 0),
            end_lr=as_float(tr.get("end_lr", 1e-5), "trainer.end_lr"),
            fract_decay=a.fract_decay if a.fract_decay is not None else float(tr.get("fract_decay", 0.2)))
        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_disc = torch.amp.GradScaler(self.device.type, enabled=fp16)

    # ----- checkpoints ------------------------------------------------------------------------------------------
    def ckpt_dir(self, step: int) -> Path:
        sch = self.schedule
        if sch.name == "wsd" and step > int(sch.total_steps * (1 - sch.fract_decay)):
            return (self.exp_dir / "cd_records" / f"cd_fract_{sch.fract_decay}_to_{sch.total_steps:07d}"
                    / "checkpoints")
        return self.exp_dir / "checkpoints"

    def save_checkpoint(self, step: int, epoch: int) -> Path | None:
        if not kit.weights_finite(self.raw_model, self.device):
            raise TrainingDiverged(f"non-finite weights at step {step}: checkpoint not written; last good "
                                   f"checkpoint: {self.last_checkpoint or 'none'}")
        model_sd, optim_sd = kit.full_state_dicts(self.raw_model, self.opt)
        ema_sd = self.ema.state_dict(self.raw_model, keep=self.dist.is_main) if self.ema is not None else None
        lecam = getattr(self.loss, "lecam_ema", None)
        rank_states = gather_objects({"rng": kit.rng_state(self.device),
                                      "lecam": lecam.state_dict() if lecam is not None else None})
        path, a, s = None, self.args, self.s
        if self.dist.is_main:
            ckpt = {
                "model": model_sd, "optimizer": optim_sd,
                "discriminator": {k: v.detach().cpu() for k, v in self.loss.discriminator.state_dict().items()},
                "optimizer_disc": self.opt_disc.state_dict(), "steps": step, "args": a, "config": to_plain(self.cfg),
                "scaler": self.scaler.state_dict(), "scaler_disc": self.scaler_disc.state_dict(),
                "rank_states": rank_states, "run_settings": self.run_settings(),
                "trainer_state": {"epoch": epoch, "steps_per_epoch": s.steps_per_epoch,
                                  "world_size": self.dist.world_size, "global_batch_size": s.global_batch,
                                  "accum": s.accum, "seed": s.seed, "data_parallel": a.data_parallel,
                                  "total_steps": s.total_steps},
            }
            if ema_sd is not None:
                ckpt["ema"] = ema_sd
            folder = self.ckpt_dir(step)
            path = save_atomic(ckpt, folder / f"{step:07d}.pt")
            for removed in prune_step_checkpoints(folder, a.milestone_step, a.milestone_start, a.max_milestone_num,
                                                  a.max_none_milestone_num):
                self.log(f"removed old checkpoint {removed}")
            self.log(f"saved checkpoint to {path}")
            plot_run_quietly(self.exp_dir, self.log)  # curves.png beside metrics.jsonl; never fatal
        barrier()
        self.last_checkpoint = self.ckpt_dir(step) / f"{step:07d}.pt"
        return path

    def _resume(self) -> None:
        a = self.args
        existing = list_checkpoints(self.exp_dir)
        if existing and not a.auto_resume:
            raise ConfigError(f"{self.exp_dir} already has checkpoints (newest {existing[-1].name}); pass "
                              "--auto-resume to continue it or choose another --exp-name")
        ckpt, path = None, None
        for candidate in reversed(existing if a.auto_resume else []):
            try:
                ckpt, path = load_checkpoint_file(candidate, mmap=True), candidate
                break
            except CheckpointError as exc:
                self.log(f"WARNING: skipping unreadable checkpoint: {exc}")
        resumed, exact = ckpt is not None, True
        # a new experiment starts from --vq-ckpt (its step unless --finetune), else from the config's
        # model.init_ckpt (weights and optimisers, step 0, as the original)
        start_from = a.vq_ckpt or self.cfg.model.get("init_ckpt")
        if ckpt is None and start_from:
            path = resolve_checkpoint(start_from)
            ckpt = load_checkpoint_file(path, mmap=True)
            exact = bool(a.vq_ckpt) and not a.finetune
        if resumed:
            changes = [] if not ckpt.get("config") else \
                kit.changed_settings(ckpt["config"], to_plain(self.cfg), SCHEDULE_ONLY)
            if "run_settings" in ckpt:
                changes += kit.changed_settings(ckpt["run_settings"], self.run_settings())
            kit.check_resume(changes, a.allow_config_change, path, self.log)
        if ckpt is not None:
            self._load(ckpt, path, exact=exact)
            if resumed:
                self.last_checkpoint = path
                if self.dist.is_main:
                    (self.exp_dir / "message.txt").write_text(f"Resume training from checkpoint: {path}\n")
                    record_resume(self.exp_dir, self.start_step, path)
        if self.dist.is_main:
            self._record_config()

    def run_settings(self) -> dict:
        """The flag-resolved settings that change what is trained (compared on resume)."""
        s, a = self.s, self.args
        return {"precision": s.precision, "ema": s.ema, "ema_decay": s.ema_decay, "seed": s.seed,
                "warmup": a.warmup, "fract_decay": a.fract_decay, "original_lr_lag": a.original_lr_lag,
                "image_size": s.image_size}

    def _record_config(self) -> None:
        """config.yaml of the first segment stays; a resumed segment with another config writes its own beside it."""
        first = self.exp_dir / "config.yaml"
        if not first.exists():
            save_config(self.cfg, first)
            return
        from utils.config import load_config
        if to_plain(load_config(first)) != to_plain(self.cfg):
            save_config(self.cfg, self.exp_dir / f"config.resume-{self.start_step:07d}.yaml")

    def _load(self, ckpt: dict, path: Path, exact: bool) -> None:
        model_sd = strip_prefixes(select_state_dict(ckpt, str(path), ("model", "ema", "state_dict")))
        kit.load_model_state(self.raw_model, model_sd, self.fsdp, source=str(path), context=self.args.model_config)
        if self.ema is not None:
            self.ema.load_state_dict(strip_prefixes(ckpt["ema"]) if "ema" in ckpt else model_sd)
        loaded = ["model"] + (["ema"] if self.ema is not None and "ema" in ckpt else [])
        if kit.check_optimizer_state(ckpt, path, self.args.reset_optimizer, self.log):
            osd = ckpt["optimizer"]
            if osd.get("state") and all(isinstance(k, int) for k in osd["state"]) and not self.fsdp:
                self.opt.load_state_dict(osd)  # original-format (parameter-index keyed) optimiser state
            else:
                kit.load_optimizer_state(self.raw_model, self.opt, osd)
            loaded.append("optimizer")
        if "discriminator" in ckpt:
            try:
                self.loss.discriminator.load_state_dict(strip_prefixes(ckpt["discriminator"]))
                if "optimizer_disc" in ckpt:
                    self.opt_disc.load_state_dict(ckpt["optimizer_disc"])
                loaded += ["discriminator", "optimizer_disc"]
            except (RuntimeError, ValueError, KeyError) as exc:
                self.log(f"WARNING: discriminator state in {path} does not fit ({type(exc).__name__}); "
                         "keeping a fresh discriminator")
        steps = int(ckpt.get("steps", 0)) if exact else 0
        if exact:
            for key, scaler in (("scaler", self.scaler), ("scaler_disc", self.scaler_disc)):
                if ckpt.get(key) and scaler.is_enabled():
                    scaler.load_state_dict(ckpt[key])
        self.start_step = steps
        ts, s = ckpt.get("trainer_state") or {}, self.s
        same_layout = (ts.get("world_size") == self.dist.world_size and ts.get("global_batch_size") == s.global_batch
                       and ts.get("accum") == s.accum and ts.get("seed") == s.seed
                       and ts.get("steps_per_epoch") == s.steps_per_epoch)
        states = ckpt.get("rank_states")
        self._restore_rng = states[self.dist.rank] if exact and states and same_layout else None
        if self._restore_rng is None and exact and steps:
            self.log("WARNING: world size, batch layout, seed or dataset differ from the checkpoint's run (or it "
                     "has no RNG state): data order and random streams continue, but not bit-identically")
        self.log(f"loaded {', '.join(loaded)} from {path}; continuing at step {steps}"
                 + (" (exact resume)" if self._restore_rng is not None else ""))

    # ----- the step ---------------------------------------------------------------------------------------------
    def _diverged(self, what: str, step: int, messages: list[str]) -> TrainingDiverged:
        return TrainingDiverged(f"non-finite {what} at iteration {step + 1} (step index {step}); stopping. "
                                f"Last good checkpoint: {self.last_checkpoint or 'none'}.\n  " + "\n  ".join(messages))

    def _checked(self, what: str, step: int, compute) -> tuple:
        """``compute()`` under autocast, returning ``(loss, logs, ...)``; every rank stops together if any rank's
        loss is not finite (or its computation raised FloatingPointError)."""
        err, result = None, None
        with kit.autocast(self.device, self.amp_dtype):
            try:
                result = compute()
            except FloatingPointError as exc:
                err = str(exc)
        value = None if result is None else result[0]
        bad = torch.zeros((), device=self.device) if value is None else ~torch.isfinite(value.detach())
        messages = any_rank(bad, err, self.device)
        if messages:
            raise self._diverged(what, step, messages)
        return result

    def generator_step(self, step: int, stream, bad_images: list[str]):
        """One generator update over ``accum`` micro-batches; returns the batches for the discriminator, the mean
        logged terms and the gradient norm. Before ``loss.gen_start`` the forward pass runs without an update."""
        s, loss_fn, d = self.s, self.loss, self.dist
        update = loss_fn.gen_active(step)
        aux = loss_fn.aux_active(step)
        kept, g_sum, epoch = [], {}, None
        for micro in range(s.accum):
            epoch, (x, _, bad) = next(stream)
            bad_images += bad
            for item in bad:
                if d.is_main:
                    self.logger.warning(f"skipped unreadable image {item}")
                else:
                    print(f"[rank {d.rank}] skipped unreadable image {item}", file=sys.stderr)
            x = x.to(self.device, non_blocking=True)
            with kit.no_sync(self.model, self.raw_model, self.fsdp, micro == s.accum - 1), \
                    torch.set_grad_enabled(update):
                def gen_loss(x=x):
                    out = self.model(x, rec_loss=aux, ret_inner_feat=self.distill)
                    extra = {"last_layer": self.raw_model.decoder.conv_out.weight} \
                        if getattr(loss_fn, "use_adaptive_weight", False) else {}
                    return (*loss_fn.generator_loss(out, x, step, **extra), out)
                g_loss, g_logs, outputs = self._checked("generator loss", step, gen_loss)
                if update:
                    self.scaler.scale(g_loss / s.accum).backward()
            dec, dir_dec = outputs[0]
            kept.append((x, dec.detach(), dir_dec.detach() if dir_dec is not None else None))
            for k, v in g_logs.items():
                g_sum[k] = g_sum.get(k, 0.0) + v / s.accum
            del outputs, g_loss
        grad_norm = torch.zeros((), device=self.device)
        if update:
            self.scaler.unscale_(self.opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(),
                                                       self.max_grad_norm or float("inf"))
            grad_norm = kit.full_tensor(grad_norm).float()
            if self.amp_dtype != torch.float16 and any_rank(~torch.isfinite(grad_norm), None, self.device):
                terms = {k: round(v, 5) for k, v in g_sum.items()}
                raise self._diverged("generator gradient norm", step,
                                     [f"grad norm {grad_norm.item()} (loss terms {terms})"])
            self.scaler.step(self.opt)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.raw_model)
        return kept, g_sum, grad_norm, epoch

    def discriminator_step(self, step: int, kept: list) -> tuple[dict, float]:
        loss_fn, s = self.loss, self.s
        if not loss_fn.disc_active(step):
            return {}, 0.0
        first = max(int(getattr(loss_fn, "disc_start", 1)) - 1, 0)
        lr_disc = set_lr(self.opt_disc, self.schedule.lr_for_update(step, lag=self.args.original_lr_lag,
                                                                    first_update=first))
        self.opt_disc.zero_grad(set_to_none=True)
        d_sum = {}
        for x, dec, dir_dec in kept:
            d_loss, d_logs = self._checked("discriminator loss", step, lambda x=x, dec=dec, dd=dir_dec:
                                           loss_fn.discriminator_loss(x, dec, step, direct_reconstructions=dd))
            if d_loss is not None:
                self.scaler_disc.scale(d_loss / s.accum).backward()
            for k, v in d_logs.items():
                d_sum[k] = d_sum.get(k, 0.0) + v / s.accum
        params = list(loss_fn.discriminator.parameters())
        allreduce_grads(params)
        self.scaler_disc.unscale_(self.opt_disc)
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.scaler_disc.step(self.opt_disc)
        self.scaler_disc.update()
        return d_sum, lr_disc

    # ----- the loop -----------------------------------------------------------------------------------------------
    def train(self) -> dict:
        s, d, a = self.s, self.dist, self.args
        step = self.start_step
        if step >= s.stop_step:
            self.log(f"nothing to do: step {step} >= stop step {s.stop_step}")
            return {"steps": step}
        self.log(f"training iterations {step} -> {s.stop_step} of {s.total_steps} (global batch {s.global_batch} = "
                 f"{d.world_size} ranks x {s.micro_batch} x {s.accum} accumulation; {len(self.dataset)} images, "
                 f"{s.steps_per_epoch} iterations per epoch); experiment {self.exp_dir}")
        stream = micro_batches(self.loader, self.sampler, s.steps_per_epoch, s.accum, s.micro_batch, step)
        if self._restore_rng is not None:
            kit.set_rng_state(self._restore_rng["rng"], self.device)
            lecam = getattr(self.loss, "lecam_ema", None)
            if lecam is not None and self._restore_rng.get("lecam"):
                lecam.load_state_dict(self._restore_rng["lecam"])
        meter, bad_images, last_logged = WindowMeter(), [], {}
        bar = tqdm(total=s.stop_step, initial=step, disable=not d.is_main or a.no_progress, desc="train",
                   dynamic_ncols=True)
        window_start, window_steps = time.time(), 0
        epoch = step // s.steps_per_epoch
        while step < s.stop_step:
            kit.check_launcher(self.watch)
            lr = set_lr(self.opt, self.schedule.lr_for_update(step, lag=a.original_lr_lag))
            self.opt.zero_grad(set_to_none=True)
            if is_distributed():
                # as DDP's broadcast_buffers (the original's VQLoss and, for FSDP, the generator's codebook_used)
                buffers = list(self.loss.discriminator.buffers()) + \
                    (list(self.raw_model.buffers()) if self.fsdp else [])
                for buf in buffers:
                    dist.broadcast(buf, src=0)
            kept, g_sum, grad_norm, epoch = self.generator_step(step, stream, bad_images)
            d_sum, lr_disc = self.discriminator_step(step, kept)
            del kept
            step += 1
            window_steps += 1
            total = g_sum.get("generator_loss", 0.0) + d_sum.get("discriminator_loss", 0.0)
            meter.add({"loss": total, **g_sum, **d_sum, "grad_norm": grad_norm})
            bar.update(1)
            if step % s.log_every == 0 or step == s.stop_step:
                last_logged = self._log_window(step, meter, lr, lr_disc, epoch, window_steps,
                                               time.time() - window_start, bad_images)
                bar.set_postfix(loss=f"{last_logged['loss']:.4f}")
                bad_images = []
                window_start, window_steps = time.time(), 0
            if (s.ckpt_every > 0 and step % s.ckpt_every == 0) or (step == s.stop_step and not a.no_final_checkpoint):
                self.save_checkpoint(step, epoch)
        bar.close()
        self.log(f"done: {step} iterations; checkpoints in {self.exp_dir / 'checkpoints'}")
        return {"steps": step, "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                "last_log": last_logged}

    def _log_window(self, step, meter, lr, lr_disc, epoch, window_steps, elapsed, bad_images) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        means = meter.mean(self.device)
        elapsed = max(elapsed, 1e-9)
        record = {**means, "lr": lr, "lr_disc": lr_disc, "epoch": epoch, "steps_per_sec": window_steps / elapsed,
                  "images_per_sec": window_steps * self.s.global_batch / elapsed}
        if self.device.type == "cuda":
            record["max_memory_GiB"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
        all_bad = [b for part in gather_objects(bad_images) for b in part]
        if all_bad:
            record["skipped_images"] = all_bad
            for item in all_bad:
                self.log(f"skipped unreadable image {item}")
        self.metrics.log(record, step)
        parts = " ".join(f"{k}={means[k]:.4f}" for k in (
            "rec_loss", "perceptual_loss", "vq_loss", "commit_loss", "entropy_loss", "feature_rec_loss", "proj_loss",
            "generator_adv_loss", "discriminator_loss", "codebook_usage") if k in means)
        self.log(f"(step={step:07d}) Train Loss: {means['loss']:.4f}, Train Steps/Sec: "
                 f"{record['steps_per_sec']:.2f}, LR: {lr:.3e}, LR_disc: {lr_disc:.3e}, Epoch: {epoch} | {parts}")
        meter.reset()
        return record

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.logger is not None:
            close_logger(self.logger)
        if self.lock is not None:
            self.lock.release()


def main(argv=None) -> dict:
    return kit.run_trainer(Trainer(parse_args(argv)))


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "tokenizer.train")
