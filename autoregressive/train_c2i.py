"""Train a class-conditional GPT on GigaTok tokens: one process, torchrun DDP, or torchrun FSDP2.

    python -m autoregressive.train_c2i --tok-config configs/vq/VQ_tiny32.yaml --dataset imagenet_code \
        --code-path CODES --gpt-model GPT-tiny --sub-exp-dir run1 --iterations 1000 --global-batch-size 64
    GPUS=8 bash scripts/train_c2i.sh ...          # DDP; scripts/train_c2i_fsdp.sh adds --data-parallel sdp

Data: ``--dataset imagenet`` tokenises ``--data-path`` images on the fly with the tokenizer (``--tok-config`` +
``--vq-ckpt``), after the original's random-resized crop and flip; ``--dataset imagenet_code`` reads codes written
by ``autoregressive.extract_codes`` under ``--code-path``. The GPT's vocabulary and length come from the tokenizer
config (``codebook_size``, number of tokens).

One step: ``loss = CE(model(cond_idx=labels, idx=codes[:, :-1]), codes)`` under autocast, GradScaler (fp16 only),
clip, AdamW (weight decay on >= 2-D tensors only), EMA. Class labels are dropped to the null class with
``--class-dropout-prob`` inside the GPT's class embedding (train mode), which is what classifier-free guidance uses.

Outputs under ``<save-path>/<sub-exp-dir>/`` (``checkpoints/%07d.pt`` with ``model``, ``optimizer``, ``steps``,
``args``, ``gpt_config`` [+ ``ema``], ``log.txt``, ``metrics.jsonl``). With ``--lr-scheduler wsd`` the checkpoints
after the constant phase go to ``cd_records/cd_fract_{f}_to_{T:07d}/checkpoints`` as the original, so cool-downs of
different lengths can branch from one constant run. Resume is automatic and exact: the per-step losses of a resumed
run equal those of an uninterrupted one. ``--compile`` defaults to on for CUDA (as the original), off on CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from tqdm import tqdm

from autoregressive import train_options
from autoregressive.data import StepBatchSampler, TrainCodeDataset, TrainImageDataset, mix_seed
from autoregressive.models.gpt import GPT_models
from autoregressive.train_options import SCHEDULE_NAMES
from tokenizer import tokenizer_info
from utils import training as kit
from utils.checkpoint import (
    CheckpointError,
    list_step_checkpoints,
    load_checkpoint_file,
    prune_step_checkpoints,
    save_atomic,
    select_state_dict,
    strip_prefixes,
)
from utils.config import ConfigError
from utils.data import collate_skip_bad
from utils.distributed import all_reduce_mean, barrier, init_distributed
from utils.ema import EMA
from utils.logging import MetricWriter, close_logger, create_logger, record_resume
from utils.lr import LRSchedule, set_lr
from utils.plot_run import plot_run_quietly

EXIT_DIVERGED, TrainingDiverged = kit.EXIT_DIVERGED, kit.TrainingDiverged


def build_parser() -> argparse.ArgumentParser:
    return train_options.build_parser(description=__doc__)


def parse_args(argv=None) -> argparse.Namespace:
    return train_options.parse_args(argv, description=__doc__)


def gpt_config(args: argparse.Namespace, vocab_size: int, block_size: int) -> dict:
    """What ``autoregressive.load_gpt`` needs to rebuild the trained model (stored in every checkpoint)."""
    return {"gpt_model": args.gpt_model, "vocab_size": vocab_size, "block_size": block_size,
            "num_classes": args.num_classes, "cls_token_num": args.cls_token_num,
            "class_dropout_prob": args.class_dropout_prob, "use_qk_norm": bool(args.qk_norm),
            "gpt_2d": bool(args.gpt_2d)}


def build_model(args: argparse.Namespace, vocab_size: int, block_size: int) -> nn.Module:
    dropout_p = 0.0 if args.drop_path_rate > 0 else args.dropout_p
    cfg = gpt_config(args, vocab_size, block_size)
    name = cfg.pop("gpt_model")
    return GPT_models[name](**cfg, model_type=args.gpt_type, resid_dropout_p=dropout_p, ffn_dropout_p=dropout_p,
                            drop_path_rate=args.drop_path_rate, token_dropout_p=args.token_dropout_p,
                            rope=args.rope, use_adaLN=args.adaLN, use_simple_adaLN=args.simple_adaLN)


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Recompute each transformer block in the backward pass (non-reentrant; dropout masks are replayed)."""
    from torch.utils.checkpoint import checkpoint

    for block in model.layers:
        def forward(*a, _inner=block.forward, **kw):
            return checkpoint(_inner, *a, use_reentrant=False, **kw)
        block.forward = forward


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The original's split: tensors with >= 2 dims (Linear weights, embeddings, positional table) decay;
    1-D tensors (RMSNorm weights) do not."""
    decay = [p for _, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def param_group_names(model: nn.Module) -> list[list[str]]:
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    return [[n for n in names if params[n].dim() >= 2], [n for n in names if params[n].dim() < 2]]


def optimizer_ids_to_names(osd: dict, group_names: list[list[str]]) -> dict:
    """An ``optimizer.state_dict()`` keyed by parameter ids (the original's DDP checkpoints) -> keyed by names
    (``get_optimizer_state_dict`` format), using the group order of :func:`param_groups`."""
    groups = osd["param_groups"]
    if len(groups) != len(group_names) or any(
            len(g["params"]) != len(n) for g, n in zip(groups, group_names, strict=True)):
        raise CheckpointError("optimizer state does not match the model's parameter groups "
                              f"({[len(g['params']) for g in groups]} vs {[len(n) for n in group_names]})")
    id_to_name = {i: n for g, names in zip(groups, group_names, strict=True)
                  for i, n in zip(g["params"], names, strict=True)}
    state = {id_to_name[i]: s for i, s in osd["state"].items()}
    new_groups = [{**g, "params": list(names)} for g, names in zip(groups, group_names, strict=True)]
    return {"state": state, "param_groups": new_groups}


def lr_for_step(schedule: LRSchedule, step: int, original_lag: bool = False) -> float:
    """LR of the optimiser update at 0-based ``step``.

    Default: ``schedule(step)``, so update 0 runs at the warmup's first value and the cool-down starts exactly at
    its first step. ``original_lag``: the original calls the scheduler after the update with the pre-increment
    count, so update 0 runs at the optimiser's constructor LR (the base LR) and update s at ``schedule(s - 1)``;
    with ``const`` it never calls the scheduler at all (the base LR throughout, warmup ignored).
    """
    if original_lag and schedule.name == "const":
        return float(schedule.base_lr)
    return schedule.lr_for_update(step, lag=original_lag)


def find_resume_checkpoint(const_dir: Path, cd_dir: Optional[Path], hold: Optional[int]) -> Optional[Path]:
    """The original's ``wsd_find_newest_ckpt`` rule (for non-WSD runs: the newest checkpoint).

    If the constant phase has reached the hold step, continue the cool-down of this T if it has checkpoints,
    else branch from the largest constant checkpoint <= hold; otherwise continue from the newest constant one.
    """
    const = list_step_checkpoints(const_dir)
    if not const:
        return None
    if cd_dir is not None and hold is not None and const[-1][0] >= hold:
        cd = list_step_checkpoints(cd_dir)
        if cd:
            return cd[-1][1]
        before = [p for s, p in const if s <= hold]
        if not before:
            raise CheckpointError(f"{const_dir} has no checkpoint at or before the cool-down start (step {hold}) "
                                  "to branch the cool-down from")
        return before[-1]
    return const[-1][1]


def prune_checkpoints(folder: Path, args: argparse.Namespace) -> list[Path]:
    """The original's ``manage_ckpt_num`` with this run's retention flags (utils.checkpoint.prune_step_checkpoints)."""
    return prune_step_checkpoints(folder, args.milestone_step, args.milestone_start, args.max_milestone_num,
                                  args.max_none_milestone_num)


# arguments a resume may change: they set only where, how long and how often, not what is trained
SCHEDULE_ONLY_ARGS = ("iterations", "early_stop_iter", "ckpt_every", "log_every", "num_workers", "milestone_step",
                      "milestone_start", "max_milestone_num", "max_none_milestone_num", "auto_resume", "wandb",
                      "wandb_project", "wandb_default_project", "tensorboard", "no_progress", "compile", "device",
                      "no_tf32", "data_parallel", "grad_precision", "save_path", "sub_exp_dir", "allow_config_change",
                      "reset_optimizer", "data_path", "code_path", "vq_ckpt")


def _plain_args(args: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


class Trainer:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.logger = self.writer = self.lock = None
        self.log_dir: Optional[Path] = None
        self.last_checkpoint: Optional[Path] = None
        self._pending: list[str] = []

    # ----- set-up -----------------------------------------------------------------------------------------------
    def build(self) -> None:
        a = self.args
        self.dist = d = init_distributed(a.device)
        a.device = str(d.device)  # args.json and checkpoints record the device used, not "auto"
        self.device = d.device
        self.amp_dtype = kit.autocast_dtype(a.mixed_precision)
        kit.configure_tf32(self.device, not a.no_tf32)
        self.compile = a.compile if a.compile is not None else self.device.type == "cuda"
        tok = tokenizer_info(a.tok_config)
        self.image_size = a.image_size or tok["image_size"]
        if self.image_size != tok["image_size"]:
            raise ConfigError(f"--image-size {self.image_size} does not match the tokenizer's "
                              f"{tok['image_size']} ({a.tok_config})")
        self.vocab_size, self.block_size = tok["codebook_size"], tok["num_tokens"]
        self.total_steps = a.iterations
        self.stop_step = min(a.iterations, a.early_stop_iter) if a.early_stop_iter is not None else a.iterations
        self.schedule = LRSchedule(SCHEDULE_NAMES[a.lr_scheduler], a.lr, self.total_steps, warmup=a.warmup,
                                   end_lr=a.end_lr, fract_decay=a.fract_decay)
        self.experiment_dir = Path(a.save_path) / a.sub_exp_dir
        self.const_ckpt_dir = self.experiment_dir / "checkpoints"
        self.cd_dir, self.hold = None, None
        if a.lr_scheduler == "wsd":
            self.cd_dir = self.experiment_dir / "cd_records" / f"cd_fract_{a.fract_decay}_to_{self.total_steps:07d}"
            # as the original trainer: int(T * (1 - fract)); the LR itself decays from T - int(fract * T)
            self.hold = int(self.total_steps * (1 - a.fract_decay))
        self.global_batch = a.global_batch_size
        if self.global_batch % d.world_size:
            raise ConfigError(f"--global-batch-size {self.global_batch} is not divisible by the world size "
                              f"{d.world_size}")
        self.local_batch = self.global_batch // d.world_size
        if self.local_batch % a.gradient_accumulation_steps:
            raise ConfigError(f"the per-rank batch {self.local_batch} is not divisible by "
                              f"--gradient-accumulation-steps {a.gradient_accumulation_steps}")
        if d.is_main:
            for folder in (self.const_ckpt_dir, *((self.cd_dir / "checkpoints",) if self.cd_dir else ())):
                folder.mkdir(parents=True, exist_ok=True)
        self.lock = kit.lock_experiment(self.experiment_dir, d.is_main, print)
        self.watch = kit.launcher_watch()
        if d.is_main:
            kit.clean_stale_temp_files([self.const_ckpt_dir, *((self.cd_dir / "checkpoints",) if self.cd_dir else ())],
                                       print)
        self._build_data()
        torch.manual_seed(a.global_seed)  # identical initialisation on every rank, independent of the world size
        self.raw_model = build_model(a, self.vocab_size, self.block_size)
        self.gpt_config = gpt_config(a, self.vocab_size, self.block_size)
        self._wrap_model()
        self.optimizer = torch.optim.AdamW(param_groups(self.raw_model, a.weight_decay), lr=a.lr,
                                           betas=(a.beta1, a.beta2),
                                           **({"fused": True} if self.device.type == "cuda" else {}))
        fp16 = self.amp_dtype == torch.float16
        if self.fsdp:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
            self.scaler = ShardedGradScaler(device=self.device.type, enabled=fp16)
        else:
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.ema = EMA(self.raw_model, a.ema_decay) if a.ema else None
        self.start_step = self._resume()
        self._open_logs(self.start_step)
        self._log_setup()

    def _build_data(self) -> None:
        a = self.args
        self.tokenizer = None
        if a.dataset == "imagenet_code":
            from autoregressive.extract_codes import code_dirs
            codes_dir, labels_dir = code_dirs(a.code_path, a.code_dataset_name, self.image_size)
            self._check_code_settings(Path(a.code_path))
            self.dataset = TrainCodeDataset(codes_dir, labels_dir, seed=a.global_seed)
            views = "alternative ten_crop_105 folder used with p=0.5" if self.dataset.alt is not None else ""
            self.log(f"dataset: {len(self.dataset):,} code files in {codes_dir} {views}")
            return
        from tokenizer import load_tokenizer
        from utils.checkpoint import resolve_checkpoint
        self.dataset = TrainImageDataset(a.data_path, self.image_size, seed=a.global_seed)
        self.log(f"dataset: {len(self.dataset):,} images in {a.data_path} ({len(self.dataset.classes)} classes)")
        if self.dist.is_main:
            resolve_checkpoint(a.vq_ckpt)  # download once
        barrier()
        tok = load_tokenizer(a.tok_config, resolve_checkpoint(a.vq_ckpt), device="cpu")
        self.tokenizer = tok.encoder_only().to(self.device).eval().requires_grad_(False)

    def _check_code_settings(self, code_path: Path) -> None:
        settings = code_path / "extract_settings.json"
        if not settings.is_file():
            return
        s = json.loads(settings.read_text())
        for key, mine in (("codebook_size", self.vocab_size), ("tokens", self.block_size),
                          ("image_size", self.image_size)):
            if key in s and int(s[key]) != mine:
                raise ConfigError(f"codes in {code_path} were extracted with {key}={s[key]}, but the tokenizer "
                                  f"config {self.args.tok_config} has {mine}")

    def _wrap_model(self) -> None:
        a = self.args
        model = self.raw_model.to(self.device)
        if a.grad_ckpt:
            enable_grad_checkpointing(model)
        self.fsdp = kit.uses_fsdp(a.data_parallel)
        if self.fsdp:
            kit.wrap_fsdp(model, model.get_fsdp_wrap_module_list(), a.data_parallel, a.mixed_precision,
                          a.grad_precision)
            self.model = torch.compile(model) if self.compile else model
        else:
            self.model = kit.wrap_ddp(torch.compile(model) if self.compile else model, self.device)
        self.model.train()  # enables the class-label dropout used for classifier-free guidance

    # ----- folders and logging ------------------------------------------------------------------------------------
    def in_cooldown(self, completed_steps: int) -> bool:
        """Checkpoints/logs after ``completed_steps`` belong to the cool-down folder (original: pre-increment
        step >= hold, i.e. the checkpoint at exactly ``hold`` stays in ``checkpoints/``)."""
        return self.hold is not None and completed_steps > self.hold

    def ckpt_dir(self, completed_steps: int) -> Path:
        return (self.cd_dir / "checkpoints") if self.in_cooldown(completed_steps) else self.const_ckpt_dir

    def _open_logs(self, completed_steps: int) -> None:
        folder = self.cd_dir if self.in_cooldown(completed_steps) else self.experiment_dir
        if folder == self.log_dir:
            return
        self._close_logs()
        a, main = self.args, self.dist.is_main
        self.logger = create_logger(folder if main else None, is_main=main, name="gigatok.train_c2i")
        run_name = a.sub_exp_dir + (f"_ar_cd_fract_{a.fract_decay}_to_{self.total_steps}" if self.cd_dir else "")
        self.writer = MetricWriter(folder, is_main=main, tensorboard=a.tensorboard, wandb_project=kit.wandb_project(a),
                                   run_name=run_name, config=_plain_args(a), logger=self.logger)
        self.log_dir = folder
        if main:  # the first segment's args.json stays; a resumed segment with other args writes its own beside it
            record, first = json.dumps(_plain_args(a), indent=2), folder / "args.json"
            if not first.exists():
                first.write_text(record)
            elif json.loads(first.read_text()) != json.loads(record):
                (folder / f"args.resume-{completed_steps:07d}.json").write_text(record)
            shutil.copyfile(a.tok_config, folder / Path(a.tok_config).name)
            if a.vq_ckpt:
                (folder / "vq_ckpt.txt").write_text(str(a.vq_ckpt))
        for msg in self._pending:
            self.logger.info(msg)
        self._pending = []

    def log(self, msg: str) -> None:
        """Rank-0 log line; lines from before the log folder is known are kept and written when it opens."""
        if self.logger is not None:
            self.logger.info(msg)
        elif getattr(self, "dist", None) is not None and self.dist.is_main:
            self._pending.append(msg)

    def log_error(self, msg: str) -> None:
        self.log(msg)

    def _log_setup(self) -> None:
        a, d = self.args, self.dist
        mode = (a.data_parallel if self.fsdp else "ddp") if d.distributed else "single process"
        self.log(" ".join(sys.argv))
        self.log(f"GPT {a.gpt_model}: {sum(p.numel() for p in self.raw_model.parameters()):,} parameters (vocab "
                 f"{self.vocab_size}, {self.block_size} tokens, {a.num_classes} classes); {mode} on "
                 f"{d.world_size} x {self.device}; precision {a.mixed_precision}; compile {self.compile}")
        decay, plain = self.optimizer.param_groups[0]["params"], self.optimizer.param_groups[1]["params"]
        self.log(f"AdamW: weight decay {a.weight_decay} on {len(decay)} tensors "
                 f"({sum(p.numel() for p in decay):,} local elements), none on {len(plain)} "
                 f"({sum(p.numel() for p in plain):,})")
        cooldown = f", cool-down from step {self.hold}" if self.hold is not None else ""
        self.log(f"{len(self.dataset):,} samples, {self.steps_per_epoch()} steps per epoch, global batch "
                 f"{self.global_batch} ({self.local_batch} per rank); steps {self.start_step} -> {self.stop_step} of "
                 f"T = {self.total_steps} ({SCHEDULE_NAMES[a.lr_scheduler]} schedule{cooldown})")

    def steps_per_epoch(self) -> int:
        return max(len(self.dataset) // self.global_batch, 1)

    # ----- checkpoints ------------------------------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> Path:
        if not kit.weights_finite(self.raw_model, self.device):
            raise TrainingDiverged(f"non-finite weights at step {step}: checkpoint not written; last good "
                                   f"checkpoint: {self.last_checkpoint or 'none'}")
        model_sd, optim_sd = kit.full_state_dicts(self.raw_model, self.optimizer)
        ema_sd = self.ema.state_dict(self.raw_model, keep=self.dist.is_main) if self.ema is not None else None
        folder = self.ckpt_dir(step)
        path = folder / f"{step:07d}.pt"
        if self.dist.is_main:
            a = self.args
            ckpt = {"model": model_sd, "optimizer": optim_sd, "steps": step, "args": _plain_args(a),
                    "gpt_config": self.gpt_config, "scaler": self.scaler.state_dict(),
                    "trainer_state": {"epoch": self.sampler.epoch_of(step),
                                      "steps_per_epoch": self.sampler.steps_per_epoch,
                                      "dataset_len": len(self.dataset), "global_batch_size": self.global_batch,
                                      "seed": a.global_seed, "world_size": self.dist.world_size,
                                      "data_parallel": a.data_parallel, "total_steps": self.total_steps}}
            if ema_sd is not None:
                ckpt["ema"] = ema_sd
            save_atomic(ckpt, path)
            self.log(f"Saved checkpoint to {path}")
            if self.log_dir is not None:  # curves.png beside the current metrics.jsonl; never fatal
                plot_run_quietly(self.log_dir, self.log)
            if folder == self.const_ckpt_dir:
                for removed in prune_checkpoints(folder, a):
                    self.log(f"removed old checkpoint {removed}")
        barrier()
        self.last_checkpoint = path
        return path

    def _resume(self) -> int:
        """Load the checkpoint the original's rule picks; returns the step to continue from (0 if none)."""
        a = self.args
        path = find_resume_checkpoint(self.const_ckpt_dir, self.cd_dir / "checkpoints" if self.cd_dir else None,
                                      self.hold)
        if path is None:
            return 0
        if not a.auto_resume:
            raise ConfigError(f"{self.experiment_dir} already has checkpoints ({path}); remove --no-auto-resume to "
                              "continue it, or choose another --sub-exp-dir")
        ckpt = load_checkpoint_file(path, mmap=True)
        stored = ckpt.get("args")
        stored = vars(stored) if isinstance(stored, argparse.Namespace) else (stored or {})
        current = _plain_args(a)
        common = set(stored) & set(current)  # arguments both launches know (older checkpoints lack newer flags)
        changes = kit.changed_settings({k: stored[k] for k in common}, {k: current[k] for k in common},
                                       SCHEDULE_ONLY_ARGS)
        kit.check_resume(changes, a.allow_config_change, path, self.log)
        model_sd = strip_prefixes(select_state_dict(ckpt, str(path), entries=("model",)))
        kit.load_model_state(self.raw_model, model_sd, self.fsdp, source=str(path))
        osd = ckpt.get("optimizer")
        if kit.check_optimizer_state(ckpt, path, a.reset_optimizer, self.log):
            by_id = (osd.get("state") and all(isinstance(k, int) for k in osd["state"])) or (
                not osd.get("state") and osd.get("param_groups")
                and all(isinstance(p, int) for g in osd["param_groups"] for p in g["params"]))
            if by_id:  # the original's DDP checkpoints
                osd = optimizer_ids_to_names(osd, param_group_names(self.raw_model))
            kit.load_optimizer_state(self.raw_model, self.optimizer, osd)
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(strip_prefixes(ckpt["ema"]) if "ema" in ckpt else model_sd)
        steps = int(ckpt["steps"])
        ts = ckpt.get("trainer_state") or {}
        changed = [f"{k} {ts[k]} -> {v}" for k, v in (("dataset_len", len(self.dataset)),
                                                        ("global_batch_size", self.global_batch),
                                                        ("seed", a.global_seed)) if k in ts and ts[k] != v]
        if changed:
            self.log(f"WARNING: data settings changed since the checkpoint ({', '.join(changed)}): the data order "
                     "after the resume differs from the uninterrupted run's")
        self.log(f"Resume training from checkpoint: {path}")
        if self.dist.is_main:  # marked on the curves (utils.plot_run)
            record_resume(self.cd_dir if self.in_cooldown(steps) else self.experiment_dir, steps, path)
        self.log(f"Initial state: steps={steps}, epochs={steps // self.steps_per_epoch()}")
        self.last_checkpoint = path
        return steps

    # ----- the step ---------------------------------------------------------------------------------------------
    def _check_batch(self, z: torch.Tensor, c: torch.Tensor) -> None:
        if z.shape[1] != self.block_size:
            raise ConfigError(f"codes have {z.shape[1]} tokens but the tokenizer config has {self.block_size}")
        lo, hi = int(z.min()), int(z.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ConfigError(f"code ids span [{lo}, {hi}], outside the vocabulary [0, {self.vocab_size})")
        if int(c.min()) < 0 or int(c.max()) >= self.args.num_classes:
            raise ConfigError(f"class labels span [{int(c.min())}, {int(c.max())}], outside [0, "
                              f"{self.args.num_classes}) (--num-classes)")

    def train_step(self, step: int, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, object, float]:
        a = self.args
        if self.tokenizer is not None:
            with torch.no_grad():
                x = self.tokenizer.encode_to_codes(x.to(self.device, non_blocking=True).float())
        b = x.shape[0]
        z = x.reshape(b, -1).to(self.device, non_blocking=True)
        c = labels.reshape(-1).to(self.device, non_blocking=True)
        if step == self.start_step:
            self._check_batch(z, c)
        # every random stream of the model (dropouts, label dropout) is a function of (seed, rank, step)
        torch.manual_seed(mix_seed(a.global_seed, self.dist.rank, step))
        lr = set_lr(self.optimizer, lr_for_step(self.schedule, step, a.original_lr_lag))
        accum = a.gradient_accumulation_steps
        total = torch.zeros((), device=self.device)
        for j, (zj, cj) in enumerate(zip(z.chunk(accum), c.chunk(accum), strict=True)):
            with kit.no_sync(self.model, self.raw_model, self.fsdp, last=j == accum - 1 or not self.dist.distributed):
                with kit.autocast(self.device, self.amp_dtype):
                    _, loss = self.model(cond_idx=cj, idx=zj[:, :-1], targets=zj)
                part = loss * (zj.shape[0] / b)
                self.scaler.scale(part).backward()
            total += part.detach().float()
        grad_norm = None
        if a.max_grad_norm != 0.0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), a.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.raw_model)
        return total, grad_norm, lr

    # ----- the loop -----------------------------------------------------------------------------------------------
    def train(self) -> dict:
        a, start = self.args, self.start_step
        result = {"start_step": start, "stop_step": self.stop_step, "checkpoint": None}
        if start >= self.stop_step:
            self.log(f"nothing to do: already at step {start} (stop step {self.stop_step})")
            return {**result, "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                    "steps": start}
        self.sampler = StepBatchSampler(len(self.dataset), self.global_batch, self.dist.rank, self.dist.world_size,
                                        a.global_seed, start_step=start, end_step=self.stop_step)
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=a.num_workers,
                                             collate_fn=collate_skip_bad, pin_memory=self.device.type == "cuda",
                                             persistent_workers=False)
        window = torch.zeros(2, device=self.device, dtype=torch.float64)  # loss, grad norm
        window_steps, t0, done, lr = 0, time.time(), start, float("nan")
        bar = tqdm(total=self.stop_step, initial=start, disable=not self.dist.is_main or a.no_progress, desc="train",
                   dynamic_ncols=True)
        # the loader is built to end at stop_step; zip stops at whichever runs out first (checked below)
        for step, batch in zip(range(start, self.stop_step), loader, strict=False):
            kit.check_launcher(self.watch)
            loss, grad_norm, lr = self.train_step(step, batch[0], batch[1])
            window[0] += loss.double()
            if grad_norm is not None:
                window[1] += kit.full_tensor(grad_norm).double()
            window_steps += 1
            done = step + 1
            bar.update(1)
            if done % a.log_every == 0 or done == self.stop_step:
                self._log_window(done, step, window, window_steps, time.time() - t0, lr)
                window.zero_()
                window_steps, t0 = 0, time.time()
            if done % a.ckpt_every == 0 or done == self.total_steps or done == self.stop_step:
                self.save_checkpoint(done)
        bar.close()
        if done < self.stop_step:
            raise RuntimeError(f"the data loader stopped early at step {done} (expected {self.stop_step})")
        self.log("Done!")
        return {**result, "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None, "steps": done}

    def _log_window(self, done: int, step: int, window: torch.Tensor, n: int, elapsed: float, lr: float) -> None:
        a = self.args
        avg_loss, avg_gn = all_reduce_mean(window / n).tolist()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        sps = n / max(elapsed, 1e-9)
        self._open_logs(done)
        if not math.isfinite(avg_loss):
            raise TrainingDiverged(f"non-finite training loss at step {done}; last good checkpoint: "
                                   f"{self.last_checkpoint or 'none'}")
        clipped = a.max_grad_norm != 0.0
        self.log(f"(step={done:07d}) Train Loss: {avg_loss:.4f}, Train Steps/Sec: {sps:.2f}, lr: {lr:.4e}"
                 + (f", grad norm: {avg_gn:.3f}" if clipped else ""))
        record = {"train_loss": avg_loss, "lr": lr, "train_steps_per_sec": sps,
                  "images_per_sec": sps * self.global_batch,
                  "tokens_per_sec": sps * self.global_batch * self.block_size, "epoch": self.sampler.epoch_of(step)}
        if clipped:
            record["grad_norm"] = avg_gn
        if self.device.type == "cuda":
            record["max_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
        self.writer.log(record, step=done)

    def _close_logs(self) -> None:
        if self.logger is not None:
            close_logger(self.logger)
        if self.writer is not None:
            self.writer.close()
        self.logger = self.writer = None

    def close(self) -> None:
        for msg in self._pending:  # a failure before the log folder was opened
            print(msg, flush=True)
        self._pending = []
        self._close_logs()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def main(argv=None) -> dict:
    return kit.run_trainer(Trainer(parse_args(argv)))


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "train_c2i")
