"""Command line and resolved settings of the tokenizer trainer (tokenizer.train): flags win over the config's
``trainer`` section, which wins over the original's defaults."""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

from utils import training as kit
from utils.cli import HelpFormatter
from utils.config import ConfigError
from utils.data import ImageFolderDataset

WANDB_PROJECT = "vqvit_imagenet_train"  # the original's


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tokenizer.train", description=description,
                                formatter_class=HelpFormatter)
    g = p.add_argument_group("data and experiment")
    g.add_argument("--data-path", required=True, help="ImageFolder root (class sub-folders) or a flat image folder")
    g.add_argument("--dataset", default="imagenet", choices=["imagenet", "imagefolder"],
                   help="both read an ImageFolder tree (the original only knows 'imagenet')")
    g.add_argument("--model-config", "--tok-config", "--config", "--vq-model", dest="model_config", required=True,
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
    g.add_argument("--early-stop-iter", type=kit.int_or_none, default=None,
                   help="stop after this many iterations without changing the schedule ('None' = off)")
    g.add_argument("--global-batch-size", type=int, default=None, help="default: trainer.global_batch_size")
    g.add_argument("--gradient-accumulation-steps", type=int, default=None,
                   help="micro-batches per iteration: per-rank micro-batch = global batch / (world * steps)")
    g.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader workers per rank (default: trainer.num_workers or 16, capped at the CPU count)")
    g.add_argument("--global-seed", type=int, default=None, help="default: trainer.global_seed, else 0")
    g = p.add_argument_group("optimisation")
    g.add_argument("--warmup", type=int, default=None, help="default: trainer.warmup")
    g.add_argument("--fract-decay", type=float, default=None,
                   help="WSD decay fraction (default trainer.fract_decay or 0.2)")
    g.add_argument("--original-lr-lag", action="store_true",
                   help="reproduce the original's LR off-by-one (update s uses f(s-1), the first update the base LR)")
    g.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="keep an EMA of the parameters (default: trainer.ema, else off)")
    g.add_argument("--ema-decay", type=float, default=None, help="default: trainer.ema_decay, else 0.9999")
    g = p.add_argument_group("compute and parallelism")
    kit.add_compute_flags(g, precision_default=None)  # None: trainer.mixed_precision, else bf16 as the original
    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--ckpt-every", type=int, default=None, help="default: trainer.ckpt_every, else 5000")
    g.add_argument("--log-every", type=int, default=None, help="default: trainer.log_every, else 500")
    g.add_argument("--vq-ckpt", default=None,
                   help="initialise from this checkpoint (model, and optimizer/discriminator/steps if present) when "
                        "the experiment has no checkpoint yet")
    g.add_argument("--finetune", action="store_true",
                   help="with --vq-ckpt: load weights and optimisers but restart the step count at 0")
    g.add_argument("--no-final-checkpoint", action="store_true",
                   help="as the original: do not save when training stops off the --ckpt-every cadence")
    kit.add_checkpoint_flags(g, max_milestone_num=30)
    kit.add_logging_flags(g, WANDB_PROJECT)
    g = p.add_argument_group("loss networks")
    g.add_argument("--random-loss-nets", action="store_true",
                   help="LPIPS trunk, DINOv2 teacher and DINO-disc backbone with random weights (tests, offline)")
    g.add_argument("--teacher-weights", default=None, help="local weights file for the DINOv2 teacher")
    g.add_argument("--lpips-vgg-path", default=None, help="local LPIPS / VGG16 weights")
    g.add_argument("--dino-disc-weights", default=None, help="local DINO ViT-S/16 weights for dinodisc")
    p.add_argument("--config-overrides", nargs="*", default=[], help="dotted config overrides, e.g. trainer.lr=2e-4")
    p.add_argument("overrides", nargs="*", help="more dotted config overrides (section.key=value)")
    return p


def parse_args(argv=None, description: str | None = None) -> argparse.Namespace:
    args = build_parser(description).parse_args(argv)
    args.config_overrides = list(args.config_overrides) + list(args.overrides)
    del args.overrides
    return args


@dataclass
class Settings:
    """What the config and flags resolve to (flags win over the config's ``trainer`` section)."""
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


def resolve_settings(args: argparse.Namespace, cfg, world_size: int) -> Settings:
    tr = cfg.get("trainer") or {}
    stem = Path(args.model_config).stem
    name = args.exp_name or (f"{args.exp_index:03d}-{stem}" if args.exp_index is not None else stem)
    gbs = int(_pick(args.global_batch_size, tr, "global_batch_size", 0))
    accum = int(_pick(args.gradient_accumulation_steps, tr, "gradient_accumulation_steps", 1))
    if gbs <= 0 or accum <= 0:
        raise ConfigError("need a positive --global-batch-size (or trainer.global_batch_size) and accumulation")
    if gbs % (world_size * accum):
        raise ConfigError(f"global batch {gbs} is not divisible by world size {world_size} x gradient "
                          f"accumulation steps {accum}")
    micro = gbs // (world_size * accum)
    image_size = args.image_size or int(cfg.model.init_args.get("image_size", 256))
    workers = args.num_workers if args.num_workers is not None else \
        min(int(_pick(None, tr, "num_workers", 16)), os.cpu_count() or 1)
    # iterations per epoch from what the sampler and a drop_last loader really deliver
    n_images = len(ImageFolderDataset(args.data_path, image_size))
    steps_per_epoch = (math.ceil(n_images / world_size) // micro) // accum
    if steps_per_epoch < 1:
        raise ConfigError(f"{n_images} images cannot fill one iteration of global batch {gbs} "
                          f"(world {world_size}, accumulation {accum})")
    total = args.iterations if args.iterations is not None else tr.get("max_steps")
    epochs = args.epochs if args.epochs is not None else tr.get("epochs")
    if total is None:
        if epochs is None:
            raise ConfigError("give --iterations (or --max-steps) or --epochs")
        total = int(epochs) * steps_per_epoch
    total = int(total)
    precision = _pick(args.mixed_precision, tr, "mixed_precision", "bf16")
    kit.autocast_dtype(precision)  # validates the name
    return Settings(
        exp_dir=Path(args.save_path) / name, total_steps=total,
        stop_step=min(total, args.early_stop_iter) if args.early_stop_iter is not None else total,
        global_batch=gbs, micro_batch=micro, accum=accum, steps_per_epoch=steps_per_epoch,
        seed=int(_pick(args.global_seed, tr, "global_seed", 0)), precision=precision,
        ema=bool(_pick(args.ema, tr, "ema", False)), ema_decay=float(_pick(args.ema_decay, tr, "ema_decay", 0.9999)),
        log_every=int(_pick(args.log_every, tr, "log_every", 500)),
        ckpt_every=int(_pick(args.ckpt_every, tr, "ckpt_every", 5000)), image_size=image_size, num_workers=workers)
