"""Command line of the AR trainer (autoregressive.train_c2i): the original's flags and defaults, checked up front."""
from __future__ import annotations

import argparse
import os
from typing import Optional

from autoregressive.loading import add_variant_flags
from autoregressive.models.gpt import GPT_models
from utils import training as kit
from utils.cli import HelpFormatter
from utils.config import ConfigError

WANDB_PROJECT = "gpt_vqvit_imagenet_train"  # the original's
# --lr-scheduler names; "cosine" is the original's spelling of cosine_v2 (cosine from lr to --end-lr)
SCHEDULE_NAMES = {"const": "const", "cosine_v2": "cosine_v2", "cosine": "cosine_v2", "wsd": "wsd"}


def _str_or_none(text: str) -> Optional[str]:
    return None if str(text) in ("None", "none", "") else str(text)


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autoregressive.train_c2i", description=description,
                                formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--code-path", type=_str_or_none, default=None,
                   help="folder with <dataset><size>_codes/ and _labels/ from autoregressive.extract_codes")
    g.add_argument("--data-path", type=_str_or_none, default=None, help="ImageFolder tree (tokenised on the fly)")
    g.add_argument("--dataset", choices=["imagenet", "imagenet_code"], default="imagenet",
                   help="imagenet: images from --data-path; imagenet_code: codes from --code-path")
    g.add_argument("--code-dataset-name", default="imagenet",
                   help="the --dataset name given to extract_codes (folder prefix of the code files)")
    g.add_argument("--image-size", type=int, default=None,
                   help="image side in pixels; must equal the tokenizer's (None: the tokenizer's image size)")
    g.add_argument("--num-classes", type=int, default=1000,
                   help="number of class labels; labels must lie in [0, N), and the class embedding gets one more "
                        "(null) row for CFG when --class-dropout-prob > 0; 1000 as the original (ImageNet)")
    g.add_argument("--num-workers", type=int, default=min(24, os.cpu_count() or 1),
                   help="DataLoader worker processes per rank (the original's 24, capped at the CPU count; 0 loads "
                        "in the main process)")
    g = p.add_argument_group("model")
    g.add_argument("--gpt-model", choices=list(GPT_models), default="GPT-B",
                   help="GPT size preset (GPT-B is the released 111M model; GPT-tiny is a 2-layer test model not in "
                        "the original)")
    g.add_argument("--gpt-2d", action="store_true",
                   help="the original's 2D-RoPE GPT (GPT_models_2d: rotary embeddings over the token grid, no "
                        "position table) for 2D tokenizers; recorded in the checkpoint's gpt_config")
    g.add_argument("--gpt-type", choices=["c2i", "t2i"], default="c2i",
                   help="c2i = class-conditional; t2i (text) is accepted as in the original but not implemented")
    g.add_argument("--grad-ckpt", action="store_true", help="activation checkpointing per transformer block")
    g.add_argument("--cls-token-num", type=int, default=1,
                   help="condition tokens before the image tokens; must be 1 for c2i (the original's gpt_1d asserts "
                        "it)")
    g.add_argument("--dropout-p", type=float, default=0.1, help="resid and ffn dropout")
    g.add_argument("--token-dropout-p", type=float, default=0.1,
                   help="dropout probability on the input embeddings (token + position) in training")
    g.add_argument("--drop-path-rate", type=float, default=0.0, help="> 0 forces resid/ffn dropout to 0 (original)")
    g.add_argument("--class-dropout-prob", type=float, default=0.1,
                   help="probability of replacing a label by the null class in training (CFG)")
    add_variant_flags(g)
    g.add_argument("--qk-norm", action="store_true",
                   help="LayerNorm over the head dimension on queries and keys in every attention layer (off in the "
                        "released GPTs; recorded in the checkpoint's gpt_config)")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--quant-way", choices=["vq"], default="vq",
                   help="quantiser family of the tokenizer; only vq (the original's fsq options raise there too)")
    g.add_argument("--tok-config", "--model-config", dest="tok_config", required=True,
                   help="tokenizer YAML (sets the GPT's vocabulary and length)")
    g.add_argument("--vq-ckpt", type=_str_or_none, default=None,
                   help="tokenizer weights (needed with --dataset imagenet; recorded with codes)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--iterations", type=int, default=1_500_000, help="total steps T of the schedule")
    g.add_argument("--early-stop-iter", type=kit.int_or_none, default=None,
                   help="stop here (schedule still uses T)")
    g.add_argument("--lr", type=float, default=1e-4, help="base (peak) learning rate of AdamW; the schedule scales it")
    g.add_argument("--weight-decay", type=float, default=5e-2,
                   help="AdamW weight decay on tensors with >= 2 dims only (Linear weights, embeddings, position "
                        "table; not the RMSNorm weights), as the original")
    g.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
    g.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="0 disables clipping")
    g.add_argument("--global-batch-size", type=int, default=256,
                   help="sequences per optimiser step summed over all ranks; must be divisible by the world size")
    g.add_argument("--global-seed", type=int, default=0,
                   help="seed of the initial weights, the data order, the data augmentation (crops, flips, code "
                        "views) and the per-step dropout streams (the initial weights do not depend on the world "
                        "size)")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1,
                   help="split each rank's batch into this many micro-batches (same result, less memory)")
    g.add_argument("--warmup", type=int, default=0, help="warmup steps: the LR ramps linearly from lr/100 to lr")
    g.add_argument("--lr-scheduler", choices=list(SCHEDULE_NAMES), default="const",
                   help="LR schedule over --iterations steps: const (lr after warmup), cosine_v2 (cosine down to "
                        "--end-lr at T; 'cosine' is the original's name for it) or wsd (constant, then a sqrt "
                        "cool-down over the last --fract-decay of T, whose checkpoints go to cd_records/)")
    g.add_argument("--end-lr", type=float, default=1e-5, help="cosine_v2: final LR")
    g.add_argument("--fract-decay", type=float, default=0.2, help="wsd: fraction of T spent cooling down")
    g.add_argument("--original-lr-lag", action="store_true",
                   help="reproduce the original's off-by-one: update 0 at the base LR, update s at f(s-1); "
                        "with const the warmup is then ignored, as in the original")
    g.add_argument("--ema", action=argparse.BooleanOptionalAction, default=False,
                   help="keep an exponential moving average of the weights (saved as 'ema' in the checkpoints)")
    g.add_argument("--ema-decay", type=float, default=0.9999, help="EMA decay per optimiser step")
    g = p.add_argument_group("compute and parallelism")
    kit.add_compute_flags(g, precision_default="bf16")
    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--save-path", "--results-dir", dest="save_path", default="results/gpt",
                   help="parent folder of experiments: the run writes to <save-path>/<sub-exp-dir>/")
    g.add_argument("--sub-exp-dir", "--exp-name", dest="sub_exp_dir", required=True,
                   help="experiment folder under --save-path")
    g.add_argument("--log-every", type=int, default=200,
                   help="steps between log lines and metric records (loss averaged over the window and the ranks)")
    g.add_argument("--ckpt-every", type=int, default=5000,
                   help="steps between checkpoints (one is also written at the last step of the schedule or of "
                        "--early-stop-iter)")
    kit.add_checkpoint_flags(g, max_milestone_num=40)
    kit.add_logging_flags(g, WANDB_PROJECT)
    return p


def parse_args(argv=None, description: str | None = None) -> argparse.Namespace:
    args = build_parser(description).parse_args(argv)
    if args.gpt_type != "c2i":
        raise ConfigError("--gpt-type t2i is not implemented")
    if args.dataset == "imagenet" and not args.data_path:
        raise ConfigError("--dataset imagenet needs --data-path (an image folder)")
    if args.dataset == "imagenet" and not args.vq_ckpt:
        raise ConfigError("--dataset imagenet tokenises on the fly and needs --vq-ckpt")
    if args.dataset == "imagenet_code" and not args.code_path:
        raise ConfigError("--dataset imagenet_code needs --code-path (from autoregressive.extract_codes)")
    if args.lr_scheduler == "wsd" and not 0.0 <= args.fract_decay <= 1.0:
        raise ConfigError(f"--fract-decay must lie in [0, 1], got {args.fract_decay}")
    for name in ("iterations", "global_batch_size", "log_every", "ckpt_every", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    return args
