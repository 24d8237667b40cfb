"""Train a GigaTok VQ tokenizer: one process, torchrun DDP, or torchrun FSDP2 (``--data-parallel fsdp``).

    python -m tokenizer.train --data-path DATA --model-config configs/vq/VQ_tiny32.yaml --iterations 1000 ...
    GPUS=8 bash scripts/train_vq.sh ...           # DDP (scripts/train_vq_fsdp.sh adds --data-parallel fsdp)

One iteration = one generator update (+ one discriminator update once ``loss.disc_active``), in the original's
order (spec tokenizer_training.md 4.2). Outputs under ``<save-path>/<exp-name>/``: ``checkpoints/%07d.pt``
(model, optimizer, discriminator, optimizer_disc, steps, args, config, ema?, scalers, per-rank RNG and data
position), ``config.yaml`` (resolved), ``log.txt`` and ``metrics.jsonl`` (rank 0).

Resume is exact: a run killed after checkpoint k and restarted (auto-resume is on by default, as the original)
repeats the uninterrupted run's per-step losses, because the data order and every augmentation are functions of
(seed, epoch, rank, position), the model-side RNGs are checkpointed per rank, and the LR is a function of the step.
A non-finite loss or gradient stops the run (exit code 3) naming the step and the terms; no checkpoint with
non-finite weights is ever written.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import UnidentifiedImageError
from tqdm import tqdm

from tokenizer import build_tokenizer, read_tokenizer_config
from tokenizer.losses import build_loss
from utils.checkpoint import (
    CheckpointError,
    list_step_checkpoints,
    load_checkpoint_file,
    load_state_dict_strict,
    prune_step_checkpoints,
    save_atomic,
    select_state_dict,
    strip_prefixes,
)
from utils.config import ConfigError, as_float, save_config, to_plain
from utils.data import ImageFolderDataset, train_transform
from utils.distributed import DistInfo, barrier, cleanup, init_distributed
from utils.ema import EMA
from utils.logging import MetricWriter, WindowMeter, close_logger, create_logger
from utils.lr import LRSchedule, set_lr

PRECISIONS = {"none": None, "fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
EXIT_DIVERGED = 3


class TrainingDiverged(RuntimeError):
    """A loss, gradient or weight became NaN/inf; the message names the step, the terms and the last checkpoint."""


# ---------------------------------------------------------------------------------------------------------------
# command line

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data and experiment")
    g.add_argument("--data-path", required=True, help="ImageFolder root (class sub-folders) or a flat image folder")
    g.add_argument("--dataset", default="imagenet", choices=["imagenet", "imagefolder"],
                   help="both read an ImageFolder tree (the original only knows 'imagenet')")
    g.add_argument("--model-config", "--config", "--vq-model", dest="model_config", required=True,
                   help="tokenizer YAML (configs/vq/*.yaml)")
    g.add_argument("--save-path", "--results-dir", dest="save_path", default="results/tokenizers/vq",
                   help="parent folder of experiments")
    g.add_argument("--sub-exp-dir", "--exp-name", dest="exp_name", default=None,
                   help="experiment folder name (default: <exp-index>-<config stem>, or the config stem)")
    g.add_argument("--exp-index", type=int, default=None, help="prefix %%03d of the default experiment name")
    g.add_argument("--image-size", type=int, default=None, help="crop size (default: the model's image size)")
    g.add_argument("--json-path", default=None, help="ignored (the original's non-ImageNet datasets)")
    g = p.add_argument_group("length and batch")
    g.add_argument("--iterations", "--max-steps", dest="iterations", type=int, default=None,
                   help="total iterations T (also the LR schedule length); or give --epochs")
    g.add_argument("--epochs", type=int, default=None, help="T = epochs * iterations per epoch (if no --iterations)")
    g.add_argument("--early-stop-iter", type=_int_or_none, default=None,
                   help="stop after this many iterations without changing the schedule ('None' = off)")
    g.add_argument("--global-batch-size", type=int, default=None, help="default: trainer.global_batch_size")
    g.add_argument("--gradient-accumulation-steps", type=int, default=None,
                   help="micro-batches per iteration: per-rank micro-batch = global batch / (world * steps)")
    g.add_argument("--num-workers", type=int, default=None, help="DataLoader workers per rank (default 16, capped "
                   "at the CPU count)")
    g.add_argument("--global-seed", type=int, default=None, help="default: trainer.global_seed, else 0")
    g = p.add_argument_group("optimisation")
    g.add_argument("--warmup", type=int, default=None, help="default: trainer.warmup")
    g.add_argument("--fract-decay", type=float, default=None, help="WSD decay fraction (default trainer.fract_decay "
                   "or 0.2)")
    g.add_argument("--original-lr-lag", action="store_true",
                   help="reproduce the original's LR off-by-one (update s uses f(s-1), the first update the base LR)")
    g.add_argument("--mixed-precision", choices=["none", "fp16", "bf16"], default=None,
                   help="autocast dtype (default: trainer.mixed_precision, else bf16 as the original)")
    g.add_argument("--grad-precision", choices=["none", "fp32", "fp16", "bf16"], default=None,
                   help="FSDP gradient reduce dtype (default: the --mixed-precision dtype, as the original)")
    g.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="keep an EMA of the parameters (default: trainer.ema, else off)")
    g.add_argument("--ema-decay", type=float, default=None, help="default: trainer.ema_decay, else 0.9999")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--no-tf32", action="store_true", help="keep TF32 off on CUDA (the original turns it on)")
    g = p.add_argument_group("parallelism and device")
    g.add_argument("--data-parallel", choices=["ddp", "fsdp", "sdp", "hsdp"], default="ddp",
                   help="ddp; or FSDP2 fully_shard per transformer block: fsdp = reshard after forward (FULL_SHARD), "
                        "sdp = keep gathered (SHARD_GRAD_OP), hsdp = shard within a node, replicate across nodes")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--ckpt-every", type=int, default=None, help="default: trainer.ckpt_every, else 5000")
    g.add_argument("--log-every", type=int, default=None, help="default: trainer.log_every, else 500")
    g.add_argument("--auto-resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from the newest complete checkpoint of the experiment (the original always does)")
    g.add_argument("--vq-ckpt", default=None,
                   help="initialise from this checkpoint (model, and optimizer/discriminator/steps if present) when "
                        "the experiment has no checkpoint yet")
    g.add_argument("--finetune", action="store_true", help="with --vq-ckpt: load weights and optimisers but restart "
                   "the step count at 0")
    g.add_argument("--milestone-step", type=int, default=50000,
                   help="checkpoint retention, as the original: the steps milestone-start + k * milestone-step "
                        "(k >= 0) are milestones, kept up to --max-milestone-num; other checkpoints older than the "
                        "newest milestone are deleted")
    g.add_argument("--milestone-start", type=int, default=50000, help="step of the first milestone checkpoint")
    g.add_argument("--max-milestone-num", type=int, default=30,
                   help="newest milestone checkpoints kept per checkpoint folder (0: keep none; nothing is deleted "
                        "when --max-none-milestone-num is -1)")
    g.add_argument("--max-none-milestone-num", type=int, default=10,
                   help="non-milestone checkpoints kept (retention as the original; -1 keeps every checkpoint)")
    g.add_argument("--no-final-checkpoint", action="store_true",
                   help="as the original: do not save when training stops off the --ckpt-every cadence")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    g.add_argument("--tensorboard", action="store_true", help="also log scalars to TensorBoard (if installed)")
    g.add_argument("--wandb", action="store_true", help="also log to wandb (if installed and logged in)")
    g.add_argument("--wandb-project", default="vqvit_imagenet_train",
                   help="wandb project name, used only with --wandb (the original's project by default)")
    g.add_argument("--no-wandb", action="store_true", help="accepted for compatibility (wandb is opt-in here)")
    g = p.add_argument_group("loss networks")
    g.add_argument("--random-loss-nets", action="store_true",
                   help="LPIPS trunk, DINOv2 teacher and DINO-disc backbone with random weights (tests, offline)")
    g.add_argument("--teacher-weights", default=None, help="local weights file for the DINOv2 teacher")
    g.add_argument("--lpips-vgg-path", default=None, help="local LPIPS / VGG16 weights")
    g.add_argument("--dino-disc-weights", default=None, help="local DINO ViT-S/16 weights for dinodisc")
    p.add_argument("--config-overrides", nargs="*", default=[], help="dotted config overrides, e.g. trainer.lr=2e-4")
    p.add_argument("overrides", nargs="*", help="more dotted config overrides (section.key=value)")
    args = p.parse_args(argv)
    args.config_overrides = list(args.config_overrides) + list(args.overrides)
    del args.overrides
    return args


def _int_or_none(text: str):
    return None if str(text).lower() == "none" else int(text)


# ---------------------------------------------------------------------------------------------------------------
# data: an ImageFolder whose augmentation is seeded per sample, and a sampler that can start mid-epoch

class AugmentedImageFolder(torch.utils.data.Dataset):
    """Training images: ``key = (index, seed)`` -> (x in [-1, 1], index used, [unreadable files skipped]).

    The crop and flip draw from ``random.Random(seed)``, so the augmentation of a sample depends only on the key.
    An unreadable image is reported and replaced by the next readable one (the batch keeps its size, so every rank
    runs the same collectives).
    """

    def __init__(self, root: str | os.PathLike, image_size: int, hflip: bool = True, max_skips: int = 32):
        self.base = ImageFolderDataset(root, image_size)
        self.image_size, self.hflip, self.max_skips = image_size, hflip, max_skips

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (int(key), int(key))
        bad: list[str] = []
        for attempt in range(self.max_skips):
            i = (index + attempt) % len(self.base)
            try:
                img = self.base.load_rgb(i)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
                bad.append(f"{self.base.items[i][0]} ({type(exc).__name__}: {exc})")
                continue
            return train_transform(img, self.image_size, random.Random(seed), self.hflip), i, bad
        raise RuntimeError(f"{self.max_skips} consecutive unreadable images from index {index}: {bad}")


def collate_train(batch):
    x = torch.stack([b[0] for b in batch])
    idx = torch.tensor([b[1] for b in batch], dtype=torch.long)
    return x, idx, [s for b in batch for s in b[2]]


def sample_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank, position]).generate_state(1)[0])


class ResumableDistributedSampler(torch.utils.data.DistributedSampler):
    """``DistributedSampler`` (same permutation and padding as the original) that yields ``(index, seed)`` keys
    and can start at a position inside the epoch without loading the skipped samples."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int = 0, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def __iter__(self):
        indices = list(super().__iter__())
        for pos in range(self.start, len(indices)):
            yield indices[pos], sample_seed(self.seed, self.epoch, self.rank, pos)

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


def micro_batches(loader, sampler, steps_per_epoch: int, accum: int, micro_bs: int, start_step: int):
    """Yield ``(epoch, batch)`` for iterations start_step, start_step + 1, ... (``accum`` micro-batches each)."""
    epoch, skip = divmod(start_step, steps_per_epoch)
    while True:
        sampler.set_epoch(epoch)
        sampler.set_start(skip * accum * micro_bs)
        it = iter(loader)
        for _ in range((steps_per_epoch - skip) * accum):
            yield epoch, next(it)
        del it
        epoch, skip = epoch + 1, 0


# ---------------------------------------------------------------------------------------------------------------
# settings

@dataclass
class Settings:
    exp_dir: Path
    total_steps: int
    stop_step: int
    global_batch: int
    micro_batch: int
    accum: int
    steps_per_epoch: int
    seed: int
    precision: str
    ema: bool
    ema_decay: float
    log_every: int
    ckpt_every: int
    image_size: int
    num_workers: int


def _pick(cli, trainer, key, default):
    if cli is not None:
        return cli
    value = trainer.get(key) if trainer is not None else None
    return default if value is None else value


def fsdp_blocks(model: nn.Module) -> list[nn.Module]:
    """Transformer layers wrapped as their own FSDP units (encoder and decoder stacks; 1D and 2D models)."""
    return [*model.vit_encoder.transformer, *model.vit_decoder.transformer]


def param_groups(model: nn.Module, weight_decay: float, exclude: list[str]) -> list[dict]:
    """One group with every parameter (DDP original), or names containing any of ``exclude`` without decay
    (the FSDP original excludes "norm")."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if any(s in name for s in exclude) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


# ---------------------------------------------------------------------------------------------------------------
# distributed helpers

def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (DDP does this for the generator)."""
    if not _distributed():
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=src)


def allreduce_grads(params) -> None:
    """Average gradients over ranks in one flat all-reduce (the discriminator is not DDP-wrapped)."""
    if not _distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, f in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(f)


def agree(bad: torch.Tensor | bool, message: str | None, device: torch.device) -> list[str]:
    """All ranks learn whether any rank is in trouble; returns every rank's message (empty list if none)."""
    flag = bad.detach().float().reshape(1).to(device) if isinstance(bad, torch.Tensor) else \
        torch.tensor([float(bad)], device=device)
    if message is not None:
        flag.fill_(1.0)
    if _distributed():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() == 0:
        return []
    msgs = [message]
    if _distributed():
        msgs = [None] * dist.get_world_size()
        dist.all_gather_object(msgs, message)
    return [f"rank {r}: {m}" for r, m in enumerate(msgs) if m] or ["(non-finite value without a message)"]


def gather_objects(obj: Any) -> list[Any]:
    if not _distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


# ---------------------------------------------------------------------------------------------------------------
# RNG state (per rank)

def rng_state(device: torch.device) -> dict:
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


# ---------------------------------------------------------------------------------------------------------------
# checkpoints

def list_checkpoints(exp_dir: Path) -> list[Path]:
    """Complete checkpoints (``%07d.pt``; temporary files of interrupted writes never match), oldest first,
    including the WSD cool-down folders."""
    found = []
    for folder in [exp_dir / "checkpoints", *sorted((exp_dir / "cd_records").glob("*/checkpoints"))]:
        if folder.is_dir():
            found += list_step_checkpoints(folder)
    return [p for _, p in sorted(found, key=lambda sp: (sp[0], str(sp[1])))]


def read_checkpoint(path: Path) -> dict:
    """Weights-only, memory-mapped load (argparse.Namespace allowed for the original's checkpoints)."""
    return load_checkpoint_file(path, mmap=True)


# ---------------------------------------------------------------------------------------------------------------
# the trainer

class Trainer:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.dist: DistInfo = init_distributed(args.device)
        self.device = self.dist.device
        self.fsdp = args.data_parallel in ("fsdp", "sdp", "hsdp")
        self.cfg = read_tokenizer_config(args.model_config, args.config_overrides)
        self.s = self._settings()
        self.exp_dir = self.s.exp_dir
        if self.dist.is_main:
            self.exp_dir.mkdir(parents=True, exist_ok=True)
        barrier()
        self.logger = create_logger(self.exp_dir, self.dist.is_main)
        self.log = self.logger.info
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not args.no_tf32

        # seeds as the original: per rank, before the model is built (ranks then receive rank 0's weights)
        rank_seed = self.s.seed * self.dist.world_size + self.dist.rank
        torch.manual_seed(rank_seed)
        np.random.seed(rank_seed % 2 ** 32)
        random.seed(rank_seed)

        self._build_data()
        self._build_model()
        self._build_optim()
        self.metrics = MetricWriter(self.exp_dir, self.dist.is_main, tensorboard=args.tensorboard,
                                    wandb_project=args.wandb_project if args.wandb else None,
                                    run_name=self.exp_dir.name, config=to_plain(self.cfg), logger=self.logger)
        self.start_step = 0
        self.last_checkpoint: Path | None = None
        self._restore_rng: dict | None = None
        self._resume()

    # ----- settings ---------------------------------------------------------------------------------------------
    def _settings(self) -> Settings:
        a, cfg, d = self.args, self.cfg, self.dist
        tr = cfg.get("trainer") or {}
        stem = Path(a.model_config).stem
        name = a.exp_name or (f"{a.exp_index:03d}-{stem}" if a.exp_index is not None else stem)
        gbs = int(_pick(a.global_batch_size, tr, "global_batch_size", 0))
        accum = int(_pick(a.gradient_accumulation_steps, tr, "gradient_accumulation_steps", 1))
        if gbs <= 0 or accum <= 0:
            raise ConfigError("need a positive --global-batch-size (or trainer.global_batch_size) and accumulation")
        if gbs % (d.world_size * accum):
            raise ConfigError(f"global batch {gbs} is not divisible by world size {d.world_size} x gradient "
                              f"accumulation steps {accum}")
        micro = gbs // (d.world_size * accum)
        image_size = a.image_size or int(cfg.model.init_args.get("image_size", 256))
        workers = a.num_workers if a.num_workers is not None else int(_pick(None, tr, "num_workers", 16))
        workers = min(workers, os.cpu_count() or 1) if a.num_workers is None else workers
        # iterations per epoch from what the sampler and a drop_last loader really deliver
        n_images = len(ImageFolderDataset(a.data_path, image_size))
        per_rank = math.ceil(n_images / d.world_size)
        steps_per_epoch = (per_rank // micro) // accum
        if steps_per_epoch < 1:
            raise ConfigError(f"{n_images} images cannot fill one iteration of global batch {gbs} "
                              f"(world {d.world_size}, accumulation {accum})")
        total = a.iterations if a.iterations is not None else tr.get("max_steps")
        epochs = a.epochs if a.epochs is not None else tr.get("epochs")
        if total is None:
            if epochs is None:
                raise ConfigError("give --iterations (or --max-steps) or --epochs")
            total = int(epochs) * steps_per_epoch
        total = int(total)
        stop = min(total, a.early_stop_iter) if a.early_stop_iter is not None else total
        precision = _pick(a.mixed_precision, tr, "mixed_precision", "bf16")
        if precision not in PRECISIONS:
            raise ConfigError(f"mixed precision must be one of none/fp16/bf16, got {precision!r}")
        return Settings(
            exp_dir=Path(a.save_path) / name, total_steps=total, stop_step=stop, global_batch=gbs,
            micro_batch=micro, accum=accum, steps_per_epoch=steps_per_epoch,
            seed=int(_pick(a.global_seed, tr, "global_seed", 0)), precision=precision,
            ema=bool(_pick(a.ema, tr, "ema", False)), ema_decay=float(_pick(a.ema_decay, tr, "ema_decay", 0.9999)),
            log_every=int(_pick(a.log_every, tr, "log_every", 500)),
            ckpt_every=int(_pick(a.ckpt_every, tr, "ckpt_every", 5000)), image_size=image_size, num_workers=workers)

    # ----- data ---------------------------------------------------------------------------------------------------
    def _build_data(self) -> None:
        s, d = self.s, self.dist
        self.dataset = AugmentedImageFolder(self.args.data_path, s.image_size)
        self.sampler = ResumableDistributedSampler(self.dataset, d.world_size, d.rank, seed=s.seed)
        # the loader gets its own generator so creating an iterator never draws from the global torch RNG
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=s.micro_batch, sampler=self.sampler, num_workers=s.num_workers,
            pin_memory=self.device.type == "cuda", drop_last=True, collate_fn=collate_train,
            persistent_workers=s.num_workers > 0, generator=torch.Generator().manual_seed(s.seed))

    # ----- model, loss, wrapping ----------------------------------------------------------------------------------
    def _build_model(self) -> None:
        a, s, d, cfg = self.args, self.s, self.dist, self.cfg
        model = build_tokenizer(cfg).to(self.device)
        if model.image_size != s.image_size:
            raise ConfigError(f"--image-size {s.image_size} does not match the model's {model.image_size}")
        self.raw_model = model
        self.loss = build_loss(cfg, pretrained=not a.random_loss_nets, device=self.device,
                               teacher_weights=a.teacher_weights, lpips_vgg_path=a.lpips_vgg_path,
                               dino_disc_weights=a.dino_disc_weights)
        broadcast_module(self.loss)  # discriminator init (and random-weight loss nets) identical on every rank
        self.distill = bool((cfg.get("trainer") or {}).get("distill_loss", False))
        self.amp_dtype = PRECISIONS[s.precision]
        if self.fsdp:
            self._wrap_fsdp(model)
            self.model = torch.compile(model) if a.compile else model
        else:
            fwd = torch.compile(model) if a.compile else model
            if d.distributed:
                ids = [self.device.index] if self.device.type == "cuda" else None
                fwd = nn.parallel.DistributedDataParallel(fwd, device_ids=ids, find_unused_parameters=True)
            self.model = fwd
        self.model.train()
        self.loss.train()
        self.ema = EMA(self.raw_model, s.ema_decay) if s.ema else None  # after wrapping: rank 0's weights
        n_params = sum(p.numel() for p in self.raw_model.parameters())
        self.log(f"model {cfg.model.model_cls} from {a.model_config}: {n_params / 1e6:.2f}M parameters; "
                 f"discriminator {sum(p.numel() for p in self.loss.discriminator.parameters()) / 1e6:.2f}M; "
                 f"{a.data_parallel if d.distributed else 'single process'} on {d.world_size} x {self.device}; "
                 f"precision {s.precision}")

    def _wrap_fsdp(self, model: nn.Module) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        a, d = self.args, self.dist
        broadcast_module(model)  # FSDP2 has no sync_module_states: start every shard from rank 0's init
        dev_type = self.device.type
        if a.data_parallel == "hsdp":
            local = int(os.environ.get("LOCAL_WORLD_SIZE", d.world_size))
            if d.world_size % local:
                raise ConfigError(f"hsdp: world size {d.world_size} is not a multiple of LOCAL_WORLD_SIZE {local}")
            mesh = init_device_mesh(dev_type, (d.world_size // local, local), mesh_dim_names=("replicate", "shard"))
        else:
            mesh = init_device_mesh(dev_type, (d.world_size,))
        param_dtype = PRECISIONS[self.s.precision] or torch.float32
        grad = a.grad_precision or self.s.precision
        reduce_dtype = PRECISIONS[grad] or torch.float32
        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
        reshard = a.data_parallel != "sdp"
        for block in fsdp_blocks(model):
            fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
        fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)

    # ----- optimisers -------------------------------------------------------------------------------------------
    def _build_optim(self) -> None:
        a, s, tr = self.args, self.s, self.cfg.get("trainer") or {}
        lr = as_float(tr.get("lr", 1e-4), "trainer.lr")
        wd = as_float(tr.get("weight_decay", 0.0), "trainer.weight_decay")
        betas = (float(tr.get("beta1", 0.9)), float(tr.get("beta2", 0.999)))
        name = tr.get("optimizer", "AdamW")
        exclude = tr.get("weight_decay_exclude")
        exclude = list(exclude) if exclude is not None else (["norm"] if self.fsdp else [])
        if name == "AdamW":
            opt_cls = torch.optim.AdamW
        elif name == "Adam":
            opt_cls = torch.optim.Adam
        else:
            raise ConfigError(f"trainer.optimizer must be AdamW or Adam, got {name!r}")
        fused = {"fused": True} if (self.fsdp and self.device.type == "cuda") else {}
        self.opt = opt_cls(param_groups(self.raw_model, wd, exclude), lr=lr, betas=betas, weight_decay=wd, **fused)
        self.opt_disc = opt_cls(self.loss.discriminator.parameters(), lr=lr, betas=betas, weight_decay=wd)
        self.max_grad_norm = float(tr.get("max_grad_norm", 0.0) or 0.0)
        sched_name = tr.get("lr_scheduler", "cosine_v2")
        warmup = a.warmup if a.warmup is not None else int(tr.get("warmup", 0) or 0)
        fract = a.fract_decay if a.fract_decay is not None else float(tr.get("fract_decay", 0.2))
        self.schedule = LRSchedule(sched_name, lr, s.total_steps, warmup=warmup,
                                   end_lr=as_float(tr.get("end_lr", 1e-5), "trainer.end_lr"), fract_decay=fract)
        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_disc = torch.amp.GradScaler(self.device.type, enabled=fp16)

    # ----- checkpoint I/O ---------------------------------------------------------------------------------------
    def ckpt_dir(self, step: int) -> Path:
        sch = self.schedule
        if sch.name == "wsd" and step > int(sch.total_steps * (1 - sch.fract_decay)):
            return (self.exp_dir / "cd_records" / f"cd_fract_{sch.fract_decay}_to_{sch.total_steps:07d}"
                    / "checkpoints")
        return self.exp_dir / "checkpoints"

    def _state_dict_options(self, full_cpu: bool):
        from torch.distributed.checkpoint.state_dict import StateDictOptions
        return StateDictOptions(full_state_dict=True, cpu_offload=full_cpu)

    def weights_finite(self) -> bool:
        bad = torch.zeros((), device=self.device)
        for p in self.raw_model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if local.numel() and not torch.isfinite(local).all():
                bad.fill_(1.0)
                break
        return not agree(bad, None, self.device)

    def save_checkpoint(self, step: int, epoch: int) -> Path | None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
        if not self.weights_finite():
            raise TrainingDiverged(f"non-finite weights at step {step}: checkpoint not written; last good "
                                   f"checkpoint: {self.last_checkpoint or 'none'}")
        opts = self._state_dict_options(full_cpu=True)
        model_sd = get_model_state_dict(self.raw_model, options=opts)
        optim_sd = get_optimizer_state_dict(self.raw_model, self.opt, options=opts)
        ema_sd = self.ema.state_dict(self.raw_model, keep=self.dist.is_main) if self.ema is not None else None
        lecam = getattr(self.loss, "lecam_ema", None)
        rank_state = {"rng": rng_state(self.device), "lecam": lecam.state_dict() if lecam is not None else None}
        rank_states = gather_objects(rank_state)
        path = None
        if self.dist.is_main:
            s = self.s
            ckpt = {
                "model": model_sd, "optimizer": optim_sd,
                "discriminator": {k: v.detach().cpu() for k, v in self.loss.discriminator.state_dict().items()},
                "optimizer_disc": self.opt_disc.state_dict(),
                "steps": step, "args": self.args, "config": to_plain(self.cfg),
                "scaler": self.scaler.state_dict(), "scaler_disc": self.scaler_disc.state_dict(),
                "rank_states": rank_states,
                "trainer_state": {"epoch": epoch, "steps_per_epoch": s.steps_per_epoch, "world_size":
                                  self.dist.world_size, "global_batch_size": s.global_batch, "accum": s.accum,
                                  "seed": s.seed, "data_parallel": self.args.data_parallel,
                                  "total_steps": s.total_steps},
            }
            if ema_sd is not None:
                ckpt["ema"] = ema_sd
            folder = self.ckpt_dir(step)
            path = save_atomic(ckpt, folder / f"{step:07d}.pt")
            for removed in prune_step_checkpoints(folder, self.args.milestone_step, self.args.milestone_start,
                                                  self.args.max_milestone_num, self.args.max_none_milestone_num):
                self.log(f"removed old checkpoint {removed}")
            self.log(f"saved checkpoint to {path}")
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
                ckpt, path = read_checkpoint(candidate), candidate
                break
            except CheckpointError as exc:
                self.log(f"WARNING: skipping unreadable checkpoint: {exc}")
        resumed = ckpt is not None
        if ckpt is None and a.vq_ckpt:
            from utils.checkpoint import resolve_checkpoint
            path = resolve_checkpoint(a.vq_ckpt)
            ckpt = read_checkpoint(path)
        if ckpt is None:
            self._save_config()
            return
        self._load(ckpt, path, exact=resumed or not a.finetune)
        if resumed:
            self.last_checkpoint = path
        if resumed and self.dist.is_main:
            (self.exp_dir / "message.txt").write_text(f"Resume training from checkpoint: {path}\n")
        self._save_config()

    def _save_config(self) -> None:
        if self.dist.is_main:
            save_config(self.cfg, self.exp_dir / "config.yaml")

    def _load(self, ckpt: dict, path: Path, exact: bool) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
        a = self.args
        opts = self._state_dict_options(full_cpu=False)
        model_sd = strip_prefixes(select_state_dict(ckpt, str(path), ("model", "ema", "state_dict")))
        if self.fsdp:
            own = set(self.raw_model.state_dict().keys())
            missing, unexpected = own - set(model_sd), set(model_sd) - own
            if missing or unexpected:
                raise CheckpointError(f"checkpoint {str(path)!r} does not match the model: missing "
                                      f"{sorted(missing)[:10]}, unexpected {sorted(unexpected)[:10]}")
            set_model_state_dict(self.raw_model, dict(model_sd), options=opts)
        else:
            load_state_dict_strict(self.raw_model, model_sd, source=str(path), context=a.model_config)
        if self.ema is not None:
            self.ema.load_state_dict(strip_prefixes(ckpt["ema"]) if "ema" in ckpt else model_sd)
        loaded = ["model"] + (["ema"] if self.ema is not None and "ema" in ckpt else [])
        if "optimizer" in ckpt:
            osd = ckpt["optimizer"]
            if osd.get("state") and all(isinstance(k, int) for k in osd["state"]) and not self.fsdp:
                self.opt.load_state_dict(osd)  # original-format (parameter-index keyed) optimiser state
            else:
                import copy

                from torch.distributed.checkpoint.state_dict import StateDictOptions
                # strict=False: parameters that never received a gradient (e.g. the distill head without
                # distill_loss) have no optimiser state in the checkpoint, and none in the live optimiser either
                set_optimizer_state_dict(self.raw_model, self.opt, copy.deepcopy(osd),
                                         options=StateDictOptions(full_state_dict=True, strict=False))
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
        ts = ckpt.get("trainer_state") or {}
        same_layout = (ts.get("world_size") == self.dist.world_size and ts.get("global_batch_size") ==
                       self.s.global_batch and ts.get("accum") == self.s.accum and ts.get("seed") == self.s.seed
                       and ts.get("steps_per_epoch") == self.s.steps_per_epoch)
        states = ckpt.get("rank_states")
        self._restore_rng = None
        if exact and states and same_layout:
            self._restore_rng = states[self.dist.rank]
        elif exact and steps:
            self.log("WARNING: world size, batch layout, seed or dataset differ from the checkpoint's run (or it "
                     "has no RNG state): data order and random streams continue, but not bit-identically")
        self.log(f"loaded {', '.join(loaded)} from {path}; continuing at step {steps}"
                 + (" (exact resume)" if self._restore_rng is not None else ""))

    # ----- the loop -----------------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _no_sync(self, last: bool):
        if last:
            return contextlib.nullcontext()
        if self.fsdp:
            self.raw_model.set_requires_gradient_sync(False)
            return _ResetGradSync(self.raw_model)
        if isinstance(self.model, nn.parallel.DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _diverged(self, what: str, step: int, messages: list[str]) -> TrainingDiverged:
        text = (f"non-finite {what} at iteration {step + 1} (step index {step}); stopping. "
                f"Last good checkpoint: {self.last_checkpoint or 'none'}.\n  " + "\n  ".join(messages))
        return TrainingDiverged(text)

    def train(self) -> dict:
        s, d, a = self.s, self.dist, self.args
        loss_fn = self.loss
        disc_params = list(loss_fn.discriminator.parameters())
        gen_params = list(self.raw_model.parameters())
        fp16 = self.amp_dtype == torch.float16
        first_disc_step = max(int(getattr(loss_fn, "disc_start", 1)) - 1, 0)
        step = self.start_step
        if step >= s.stop_step:
            self.log(f"nothing to do: step {step} >= stop step {s.stop_step}")
            return {"steps": step}
        self.log(f"training iterations {step} -> {s.stop_step} of {s.total_steps} (global batch {s.global_batch} = "
                 f"{d.world_size} ranks x {s.micro_batch} x {s.accum} accumulation; {len(self.dataset)} images, "
                 f"{s.steps_per_epoch} iterations per epoch); experiment {self.exp_dir}")
        stream = micro_batches(self.loader, self.sampler, s.steps_per_epoch, s.accum, s.micro_batch, step)
        if self._restore_rng is not None:
            set_rng_state(self._restore_rng["rng"], self.device)
            lecam = getattr(loss_fn, "lecam_ema", None)
            if lecam is not None and self._restore_rng.get("lecam"):
                lecam.load_state_dict(self._restore_rng["lecam"])
        meter = WindowMeter()
        bad_images: list[str] = []
        bar = tqdm(total=s.stop_step, initial=step, disable=not d.is_main or a.no_progress, desc="train",
                   dynamic_ncols=True)
        window_start, window_steps = time.time(), 0
        epoch = step // s.steps_per_epoch
        last_logged: dict = {}
        while step < s.stop_step:
            lr = set_lr(self.opt, self.schedule.lr_for_update(step, lag=a.original_lr_lag))
            self.opt.zero_grad(set_to_none=True)
            if _distributed():
                # as DDP's broadcast_buffers (the original's VQLoss and, for FSDP, the generator's codebook_used)
                bufs = list(loss_fn.discriminator.buffers()) + (list(self.raw_model.buffers()) if self.fsdp else [])
                for buf in bufs:
                    dist.broadcast(buf, src=0)
            aux = loss_fn.aux_active(step)
            kept, g_sum = [], {}
            for micro in range(s.accum):
                epoch, (x, _, bad) = next(stream)
                bad_images += bad
                for item in bad:
                    self.logger.warning(f"skipped unreadable image {item}") if d.is_main else \
                        print(f"[rank {d.rank}] skipped unreadable image {item}", file=sys.stderr)
                x = x.to(self.device, non_blocking=True)
                with self._no_sync(micro == s.accum - 1):
                    err, g_loss, g_logs = None, None, {}
                    with self._autocast():
                        try:
                            outputs = self.model(x, rec_loss=aux, ret_inner_feat=self.distill)
                            extra = {}
                            if getattr(loss_fn, "use_adaptive_weight", False):
                                extra["last_layer"] = self.raw_model.decoder.conv_out.weight
                            g_loss, g_logs = loss_fn.generator_loss(outputs, x, step, **extra)
                        except FloatingPointError as exc:
                            err = str(exc)
                    bad_flag = (torch.zeros((), device=self.device) if g_loss is None
                                else ~torch.isfinite(g_loss.detach()))
                    msgs = agree(bad_flag, err, self.device)
                    if msgs:
                        raise self._diverged("generator loss", step, msgs)
                    self.scaler.scale(g_loss / s.accum).backward()
                dec, dir_dec = outputs[0]
                kept.append((x, dec.detach(), dir_dec.detach() if dir_dec is not None else None))
                for k, v in g_logs.items():
                    g_sum[k] = g_sum.get(k, 0.0) + v / s.accum
                del outputs, g_loss
            self.scaler.unscale_(self.opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(gen_params, self.max_grad_norm or float("inf"))
            grad_norm = _full(grad_norm).float()
            if not fp16 and agree(~torch.isfinite(grad_norm), None, self.device):
                raise self._diverged("generator gradient norm", step, [f"grad norm {grad_norm.item()} (loss terms "
                                     f"{ {k: round(v, 5) for k, v in g_sum.items()} })"])
            self.scaler.step(self.opt)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.raw_model)

            d_sum, lr_disc = {}, 0.0
            if loss_fn.disc_active(step):
                lr_disc = set_lr(self.opt_disc, self.schedule.lr_for_update(step, lag=a.original_lr_lag,
                                                                            first_update=first_disc_step))
                self.opt_disc.zero_grad(set_to_none=True)
                for x, dec, dir_dec in kept:
                    err, d_loss, d_logs = None, None, {}
                    with self._autocast():
                        try:
                            d_loss, d_logs = loss_fn.discriminator_loss(x, dec, step, direct_reconstructions=dir_dec)
                        except FloatingPointError as exc:
                            err = str(exc)
                    bad_flag = (torch.zeros((), device=self.device) if d_loss is None
                                else ~torch.isfinite(d_loss.detach()))
                    msgs = agree(bad_flag, err, self.device)
                    if msgs:
                        raise self._diverged("discriminator loss", step, msgs)
                    if d_loss is not None:
                        self.scaler_disc.scale(d_loss / s.accum).backward()
                    for k, v in d_logs.items():
                        d_sum[k] = d_sum.get(k, 0.0) + v / s.accum
                allreduce_grads(disc_params)
                self.scaler_disc.unscale_(self.opt_disc)
                if self.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(disc_params, self.max_grad_norm)
                self.scaler_disc.step(self.opt_disc)
                self.scaler_disc.update()
            del kept

            step += 1
            window_steps += 1
            total = g_sum.get("generator_loss", 0.0) + d_sum.get("discriminator_loss", 0.0)
            meter.add({"loss": total, **g_sum, **d_sum, "grad_norm": grad_norm})
            bar.update(1)

            if step % s.log_every == 0 or step == s.stop_step:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                means = meter.mean(self.device)
                elapsed = max(time.time() - window_start, 1e-9)
                record = {**means, "lr": lr, "lr_disc": lr_disc, "epoch": epoch,
                          "steps_per_sec": window_steps / elapsed,
                          "images_per_sec": window_steps * s.global_batch / elapsed}
                if self.device.type == "cuda":
                    record["max_memory_GiB"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
                all_bad = [b for part in gather_objects(bad_images) for b in part]
                if all_bad:
                    record["skipped_images"] = all_bad
                    for item in all_bad:
                        self.log(f"skipped unreadable image {item}")
                self.metrics.log(record, step)
                parts = " ".join(f"{k}={means[k]:.4f}" for k in ("rec_loss", "perceptual_loss", "vq_loss",
                                 "commit_loss", "entropy_loss", "feature_rec_loss", "proj_loss",
                                 "generator_adv_loss", "discriminator_loss", "codebook_usage") if k in means)
                self.log(f"(step={step:07d}) Train Loss: {means['loss']:.4f}, Train Steps/Sec: "
                         f"{record['steps_per_sec']:.2f}, LR: {lr:.3e}, LR_disc: {lr_disc:.3e}, Epoch: {epoch} "
                         f"| {parts}")
                bar.set_postfix(loss=f"{means['loss']:.4f}")
                meter.reset()
                bad_images = []
                last_logged = record
                window_start, window_steps = time.time(), 0

            at_cadence = s.ckpt_every > 0 and step % s.ckpt_every == 0
            final = step == s.stop_step and not a.no_final_checkpoint
            if at_cadence or final:
                self.save_checkpoint(step, epoch)
        bar.close()
        self.log(f"done: {step} iterations; checkpoints in {self.exp_dir / 'checkpoints'}")
        return {"steps": step, "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                "last_log": last_logged}

    def close(self) -> None:
        self.metrics.close()
        close_logger(self.logger)


class _ResetGradSync:
    """Turn FSDP2 gradient reduction back on when leaving a non-final micro-batch."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.module.set_requires_gradient_sync(True)
        return False


def main(argv=None) -> dict:
    args = parse_args(argv)
    trainer = None
    try:
        trainer = Trainer(args)
        return trainer.train()
    except TrainingDiverged as exc:
        if trainer is not None:
            trainer.logger.error(f"ERROR: {exc}")
        raise
    finally:
        if trainer is not None:
            trainer.close()
        cleanup()


if __name__ == "__main__":
    try:
        main()
    except TrainingDiverged as exc:
        print(f"training stopped: {exc}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
