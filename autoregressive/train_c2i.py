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
``args`` [+ ``ema``], ``log.txt``, ``metrics.jsonl``). With ``--lr-scheduler wsd`` the checkpoints after the
constant phase go to ``cd_records/cd_fract_{f}_to_{T:07d}/checkpoints`` as the original, so cool-downs of different
lengths can branch from one constant run. Resume is automatic and exact (see ``docs``: the per-step losses of a
resumed run equal those of an uninterrupted one).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from autoregressive.data import StepBatchSampler, TrainCodeDataset, TrainImageDataset, mix_seed
from autoregressive.loading import add_variant_flags
from autoregressive.models.gpt import GPT_models
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
from utils.cli import HelpFormatter
from utils.data import collate_skip_bad
from utils.distributed import DistInfo, barrier, cleanup, init_distributed
from utils.ema import EMA
from utils.logging import MetricWriter, close_logger, create_logger
from utils.lr import LRSchedule, set_lr

PRECISIONS = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}
GRAD_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
EXIT_DIVERGED = 3
WANDB_PROJECT = "gpt_vqvit_imagenet_train"


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN/inf; the message names the step and the last good checkpoint."""


def _int_or_none(text: str) -> Optional[int]:
    return None if str(text).lower() == "none" else int(text)


def _str_or_none(text: str) -> Optional[str]:
    return None if str(text) in ("None", "none", "") else str(text)


# ---------------------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
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
    g.add_argument("--gpt-2d", action="store_true", help="the original's 2D-RoPE GPT (not implemented here)")
    g.add_argument("--gpt-type", choices=["c2i", "t2i"], default="c2i",
                   help="c2i = class-conditional; t2i (text) is accepted as in the original but not implemented "
                        "(exits with an error)")
    g.add_argument("--grad-ckpt", action="store_true", help="activation checkpointing per transformer block")
    g.add_argument("--cls-token-num", type=int, default=1,
                   help="condition tokens before the image tokens; must be 1 for c2i (the original's gpt_1d asserts "
                        "it)")
    g.add_argument("--dropout-p", type=float, default=0.1, help="resid and ffn dropout")
    g.add_argument("--token-dropout-p", type=float, default=0.1,
                   help="dropout probability on the input embeddings (token + position) in training; 0.1 as the "
                        "original")
    g.add_argument("--drop-path-rate", type=float, default=0.0, help="> 0 forces resid/ffn dropout to 0 (original)")
    g.add_argument("--class-dropout-prob", type=float, default=0.1,
                   help="probability of replacing a label by the null class in training (CFG); 0.1 as the original")
    add_variant_flags(g)
    g.add_argument("--qk-norm", action="store_true",
                   help="LayerNorm over the head dimension on queries and keys in every attention layer (off in the "
                        "released GPTs; recorded in the checkpoint's gpt_config)")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--quant-way", choices=["vq"], default="vq",
                   help="quantiser family of the tokenizer; only vq (the original's fsq options raise there too)")
    g.add_argument("--tok-config", required=True, help="tokenizer YAML (sets the GPT's vocabulary and length)")
    g.add_argument("--vq-ckpt", type=_str_or_none, default=None,
                   help="tokenizer weights (needed with --dataset imagenet; recorded with codes)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--iterations", type=int, default=1_500_000, help="total steps T of the schedule")
    g.add_argument("--early-stop-iter", type=_int_or_none, default=None, help="stop here (schedule still uses T)")
    g.add_argument("--lr", type=float, default=1e-4,
                   help="base (peak) learning rate of AdamW; the schedule scales it")
    g.add_argument("--weight-decay", type=float, default=5e-2,
                   help="AdamW weight decay on tensors with >= 2 dims only (Linear weights, embeddings, position "
                        "table; not the RMSNorm weights), as the original")
    g.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
    g.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="0 disables clipping")
    g.add_argument("--global-batch-size", type=int, default=256,
                   help="sequences per optimiser step summed over all ranks; must be divisible by the world size "
                        "(per-rank batch = global / world size)")
    g.add_argument("--global-seed", type=int, default=0,
                   help="seed of the initial weights, the data order, the data augmentation (crops, flips, code "
                        "views) and the per-step dropout streams (the initial weights do not depend on the world "
                        "size)")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1,
                   help="split each rank's batch into this many micro-batches (same result, less memory)")
    g.add_argument("--mixed-precision", choices=list(PRECISIONS), default="bf16",
                   help="autocast dtype of the forward pass: bf16, fp16 (adds a GradScaler) or none (fp32, TF32 on "
                        "CUDA unless --no-tf32); with FSDP also the parameter dtype")
    g.add_argument("--grad-precision", choices=list(GRAD_PRECISIONS), default=None,
                   help="FSDP gradient reduce dtype (None: the --mixed-precision dtype, fp32 for none)")
    g.add_argument("--warmup", type=int, default=0,
                   help="warmup steps: the LR ramps linearly from lr/100 to lr (0: no warmup)")
    g.add_argument("--lr-scheduler", choices=["const", "cosine", "wsd"], default="const",
                   help="LR schedule over --iterations steps: const (lr after warmup), cosine (down to --end-lr at "
                        "T, the original's cosine_v2) or wsd (constant, then a sqrt cool-down over the last "
                        "--fract-decay of T, whose checkpoints go to cd_records/; what the original's scripts use)")
    g.add_argument("--end-lr", type=float, default=1e-5, help="cosine: final LR")
    g.add_argument("--fract-decay", type=float, default=0.2, help="wsd: fraction of T spent cooling down")
    g.add_argument("--original-lr-lag", action="store_true",
                   help="reproduce the original's off-by-one: update 0 at the base LR, update s at f(s-1); "
                        "with const the warmup is then ignored, as in the original")
    g.add_argument("--ema", action="store_true",
                   help="keep an exponential moving average of the weights (saved as 'ema' in the checkpoints)")
    g.add_argument("--ema-decay", type=float, default=0.9999,
                   help="EMA decay per optimiser step (0.9999 as the original)")
    cg = g.add_mutually_exclusive_group()
    cg.add_argument("--compile", dest="compile", action="store_true", default=None,
                    help="torch.compile the model (None, i.e. neither flag: on for CUDA, as the original; off on "
                         "CPU)")
    cg.add_argument("--no-compile", dest="compile", action="store_false", default=None,
                    help="do not torch.compile the model")
    g.add_argument("--no-tf32", action="store_true", help="keep TF32 off on CUDA (the original turns it on)")
    g = p.add_argument_group("parallelism and device")
    g.add_argument("--data-parallel", choices=["ddp", "sdp", "fsdp", "hsdp"], default="ddp",
                   help="ddp; or FSDP2 fully_shard per transformer block: sdp = keep parameters gathered between "
                        "forward and backward (SHARD_GRAD_OP), fsdp = reshard (FULL_SHARD), hsdp = shard within "
                        "a node and replicate across nodes")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--save-path", "--results-dir", dest="save_path", default="results/gpt",
                   help="parent folder of experiments: the run writes to <save-path>/<sub-exp-dir>/")
    g.add_argument("--sub-exp-dir", required=True, help="experiment folder under --save-path")
    g.add_argument("--log-every", type=int, default=200,
                   help="steps between log lines and metric records (loss averaged over the window and the ranks)")
    g.add_argument("--ckpt-every", type=int, default=5000,
                   help="steps between checkpoints (one is also written at the last step of the schedule or of "
                        "--early-stop-iter)")
    g.add_argument("--milestone-step", type=int, default=50_000,
                   help="checkpoint retention in checkpoints/, as the original: the steps milestone-start + k * "
                        "milestone-step (k >= 0) are milestones, kept up to --max-milestone-num; other checkpoints "
                        "older than the newest milestone are deleted")
    g.add_argument("--milestone-start", type=int, default=50_000, help="step of the first milestone checkpoint")
    g.add_argument("--max-milestone-num", type=int, default=40,
                   help="newest milestone checkpoints kept in checkpoints/ (0: keep none; nothing is deleted when "
                        "--max-none-milestone-num is -1)")
    g.add_argument("--max-none-milestone-num", type=int, default=10,
                   help="non-milestone checkpoints kept in checkpoints/ (-1: keep all)")
    g.add_argument("--no-auto-resume", action="store_true", help="refuse to start if checkpoints exist")
    g.add_argument("--wandb-project", default=None, help="log to wandb (only if installed and logged in)")
    g.add_argument("--no-wandb", action="store_true", help="accepted for compatibility; wandb is off by default")
    g.add_argument("--tensorboard", action="store_true",
                   help="also log the metrics to TensorBoard under <experiment>/tensorboard (if installed)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.gpt_2d:
        raise SystemExit("--gpt-2d: the 2D-RoPE GPT is not implemented in this reimplementation (the released GPTs "
                         "are 1D; the original's 2D sampling is broken, spec 1.9)")
    if args.gpt_type != "c2i":
        raise SystemExit("--gpt-type t2i is not implemented")
    if args.dataset == "imagenet" and not args.data_path:
        raise SystemExit("--dataset imagenet needs --data-path (an image folder)")
    if args.dataset == "imagenet" and not args.vq_ckpt:
        raise SystemExit("--dataset imagenet tokenises on the fly and needs --vq-ckpt")
    if args.dataset == "imagenet_code" and not args.code_path:
        raise SystemExit("--dataset imagenet_code needs --code-path (from autoregressive.extract_codes)")
    if args.lr_scheduler == "wsd" and not 0.0 <= args.fract_decay <= 1.0:
        raise SystemExit(f"--fract-decay must lie in [0, 1], got {args.fract_decay}")
    for name in ("iterations", "global_batch_size", "log_every", "ckpt_every", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    return args


# ---------------------------------------------------------------------------------------------------------------
# helpers

def tokenizer_info(tok_config: str) -> dict:
    """Vocabulary, token count and image size of a tokenizer config (built on the meta device, no weights)."""
    from tokenizer import build_tokenizer, read_tokenizer_config
    cfg = read_tokenizer_config(tok_config)
    with torch.device("meta"):
        tok = build_tokenizer(cfg)
    return {"codebook_size": int(tok.codebook_size), "num_tokens": int(tok.num_tokens),
            "image_size": int(tok.image_size), "model_cls": str(cfg.model.model_cls)}


def gpt_config(args: argparse.Namespace, vocab_size: int, block_size: int) -> dict:
    """What ``autoregressive.load_gpt`` needs to rebuild the trained model (stored in every checkpoint)."""
    return {"gpt_model": args.gpt_model, "vocab_size": vocab_size, "block_size": block_size,
            "num_classes": args.num_classes, "cls_token_num": args.cls_token_num,
            "class_dropout_prob": args.class_dropout_prob, "use_qk_norm": bool(args.qk_norm)}


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
        inner = block.forward

        def forward(*a, _inner=inner, **kw):
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


def read_checkpoint(path: Path) -> dict:
    """Weights-only, memory-mapped load (argparse.Namespace allowed for the original's checkpoints)."""
    return load_checkpoint_file(path, mmap=True)


def _plain_args(args: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# ---------------------------------------------------------------------------------------------------------------
# the trainer

class Trainer:
    def __init__(self, args: argparse.Namespace, dist_info: DistInfo):
        self.args, self.dist = args, dist_info
        self.device = dist_info.device
        self.fsdp = args.data_parallel != "ddp" and dist_info.distributed
        self.amp_dtype = PRECISIONS[args.mixed_precision]
        if self.device.type == "cuda" and not args.no_tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.compile = args.compile if args.compile is not None else self.device.type == "cuda"

        # tokenizer-derived sizes
        self.tok = tokenizer_info(args.tok_config)
        self.image_size = args.image_size or self.tok["image_size"]
        if self.image_size != self.tok["image_size"]:
            raise SystemExit(f"--image-size {self.image_size} does not match the tokenizer's "
                             f"{self.tok['image_size']} ({args.tok_config})")
        self.vocab_size, self.block_size = self.tok["codebook_size"], self.tok["num_tokens"]

        # schedule and folder layout
        self.total_steps = args.iterations
        self.stop_step = min(self.total_steps, args.early_stop_iter) if args.early_stop_iter is not None \
            else self.total_steps
        self.schedule = LRSchedule("cosine_v2" if args.lr_scheduler == "cosine" else args.lr_scheduler,
                                   args.lr, self.total_steps, warmup=args.warmup, end_lr=args.end_lr,
                                   fract_decay=args.fract_decay)
        self.experiment_dir = Path(args.save_path) / args.sub_exp_dir
        self.const_ckpt_dir = self.experiment_dir / "checkpoints"
        if args.lr_scheduler == "wsd":
            self.cd_dir: Optional[Path] = (self.experiment_dir / "cd_records"
                                           / f"cd_fract_{args.fract_decay}_to_{self.total_steps:07d}")
            # as the original trainer: int(T * (1 - fract)); the LR itself decays from T - int(fract * T)
            self.hold: Optional[int] = int(self.total_steps * (1 - args.fract_decay))
        else:
            self.cd_dir, self.hold = None, None
        self.global_batch = args.global_batch_size
        w = dist_info.world_size
        if self.global_batch % w:
            raise SystemExit(f"--global-batch-size {self.global_batch} is not divisible by the world size {w}")
        self.local_batch = self.global_batch // w
        if self.local_batch % args.gradient_accumulation_steps:
            raise SystemExit(f"the per-rank batch {self.local_batch} is not divisible by "
                             f"--gradient-accumulation-steps {args.gradient_accumulation_steps}")
        self.logger = None
        self.writer = None
        self._pending: list[str] = []
        self.log_dir: Optional[Path] = None
        self.last_checkpoint: Optional[Path] = None

    # ----- folders and logging ------------------------------------------------------------------------------------
    def in_cooldown(self, completed_steps: int) -> bool:
        """Checkpoints/logs after ``completed_steps`` belong to the cool-down folder (original: pre-increment
        step >= hold, i.e. the checkpoint at exactly ``hold`` stays in ``checkpoints/``)."""
        return self.hold is not None and completed_steps > self.hold

    def exp_dir(self, completed_steps: int) -> Path:
        return self.cd_dir if self.in_cooldown(completed_steps) else self.experiment_dir

    def ckpt_dir(self, completed_steps: int) -> Path:
        return (self.cd_dir / "checkpoints") if self.in_cooldown(completed_steps) else self.const_ckpt_dir

    def open_logs(self, completed_steps: int) -> None:
        folder = self.exp_dir(completed_steps)
        if folder == self.log_dir:
            return
        if self.logger is not None:
            close_logger(self.logger)
            self.writer.close()
        a, main = self.args, self.dist.is_main
        self.logger = create_logger(folder if main else None, is_main=main, name="gigatok.train_c2i")
        run_name = a.sub_exp_dir + (f"_ar_cd_fract_{a.fract_decay}_to_{self.total_steps}" if self.cd_dir else "")
        self.writer = MetricWriter(folder, is_main=main, tensorboard=a.tensorboard,
                                   wandb_project=None if a.no_wandb else a.wandb_project, run_name=run_name,
                                   config=_plain_args(a), logger=self.logger)
        self.log_dir = folder
        if main:
            self.write_run_files(folder)
        for msg in self._pending:
            self.logger.info(msg)
        self._pending = []

    def log(self, msg: str) -> None:
        """Rank-0 log line; lines from before the log folder is known are kept and written when it opens."""
        if self.logger is not None:
            self.logger.info(msg)
        elif self.dist.is_main:
            self._pending.append(msg)

    def write_run_files(self, folder: Path) -> None:
        a = self.args
        (folder / "args.json").write_text(json.dumps(_plain_args(a), indent=2))
        shutil.copyfile(a.tok_config, folder / Path(a.tok_config).name)
        if a.vq_ckpt:
            (folder / "vq_ckpt.txt").write_text(str(a.vq_ckpt))

    # ----- data -------------------------------------------------------------------------------------------------------
    def build_data(self) -> None:
        a = self.args
        if a.dataset == "imagenet_code":
            from autoregressive.extract_codes import code_dirs
            codes_dir, labels_dir = code_dirs(a.code_path, a.code_dataset_name, self.image_size)
            self.check_code_settings(Path(a.code_path))
            self.dataset = TrainCodeDataset(codes_dir, labels_dir, seed=a.global_seed)
            views = "alternative ten_crop_105 folder used with p=0.5" if self.dataset.alt is not None else ""
            self.log(f"dataset: {len(self.dataset):,} code files in {codes_dir} {views}")
            self.tokenizer = None
        else:
            from tokenizer import load_tokenizer
            from utils.checkpoint import resolve_checkpoint
            self.dataset = TrainImageDataset(a.data_path, self.image_size, seed=a.global_seed)
            self.log(f"dataset: {len(self.dataset):,} images in {a.data_path} ({len(self.dataset.classes)} classes)")
            if self.dist.is_main:
                resolve_checkpoint(a.vq_ckpt)  # download once
            barrier()
            tok = load_tokenizer(a.tok_config, resolve_checkpoint(a.vq_ckpt), device="cpu")
            # only the encoder is needed (the original deletes the pixel decoder too)
            for name in ("decoder", "s1to2decoder", getattr(tok, "_vit_names", (None, None))[1]):
                if name and isinstance(getattr(tok, name, None), nn.Module):
                    delattr(tok, name)
            self.tokenizer = tok.to(self.device).eval().requires_grad_(False)

    def check_code_settings(self, code_path: Path) -> None:
        settings = code_path / "extract_settings.json"
        if not settings.is_file():
            return
        s = json.loads(settings.read_text())
        for key, mine in (("codebook_size", self.vocab_size), ("tokens", self.block_size),
                          ("image_size", self.image_size)):
            if key in s and int(s[key]) != mine:
                raise SystemExit(f"codes in {code_path} were extracted with {key}={s[key]}, but the tokenizer "
                                 f"config {self.args.tok_config} has {mine}")

    def loader(self, start_step: int) -> torch.utils.data.DataLoader:
        a, d = self.args, self.dist
        self.sampler = StepBatchSampler(len(self.dataset), self.global_batch, d.rank, d.world_size, a.global_seed,
                                        start_step=start_step, end_step=self.stop_step)
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=a.num_workers,
                                           collate_fn=collate_skip_bad, pin_memory=self.device.type == "cuda",
                                           persistent_workers=False)

    # ----- model ------------------------------------------------------------------------------------------------
    def build_model(self) -> None:
        a = self.args
        torch.manual_seed(a.global_seed)  # identical initialisation on every rank, independent of the world size
        model = build_model(a, self.vocab_size, self.block_size)
        self.gpt_config = gpt_config(a, self.vocab_size, self.block_size)
        self.raw_model = model
        self.n_params = sum(p.numel() for p in model.parameters())

    def wrap_model(self) -> None:
        a, d = self.args, self.dist
        model = self.raw_model.to(self.device)
        if a.grad_ckpt:
            enable_grad_checkpointing(model)
        if self.fsdp:
            self.wrap_fsdp(model)
            self.model = torch.compile(model) if self.compile else model
        else:
            fwd = torch.compile(model) if self.compile else model
            if d.distributed:
                ids = [self.device.index] if self.device.type == "cuda" else None
                fwd = nn.parallel.DistributedDataParallel(fwd, device_ids=ids)
            self.model = fwd
        self.model.train()  # enables the class-label dropout used for classifier-free guidance

    def wrap_fsdp(self, model: nn.Module) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        a, d = self.args, self.dist
        if a.data_parallel == "hsdp":
            local = int(os.environ.get("LOCAL_WORLD_SIZE", d.world_size))
            if d.world_size % local:
                raise SystemExit(f"hsdp: world size {d.world_size} is not a multiple of LOCAL_WORLD_SIZE {local}")
            mesh = init_device_mesh(self.device.type, (d.world_size // local, local),
                                    mesh_dim_names=("replicate", "shard"))
        else:
            mesh = init_device_mesh(self.device.type, (d.world_size,))
        param_dtype = self.amp_dtype or torch.float32
        reduce_dtype = GRAD_PRECISIONS[a.grad_precision] if a.grad_precision else param_dtype
        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
        reshard = a.data_parallel != "sdp"
        for block in model.get_fsdp_wrap_module_list():
            fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
        fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)

    def build_optimizer(self) -> None:
        a = self.args
        extra = {"fused": True} if self.device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(param_groups(self.raw_model, a.weight_decay), lr=a.lr,
                                           betas=(a.beta1, a.beta2), **extra)
        fp16 = self.amp_dtype == torch.float16
        if self.fsdp:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
            self.scaler = ShardedGradScaler(device=self.device.type, enabled=fp16)
        else:
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.ema = EMA(self.raw_model, a.ema_decay) if a.ema else None

    # ----- checkpoints ------------------------------------------------------------------------------------------
    def _sd_options(self, cpu_offload: bool):
        from torch.distributed.checkpoint.state_dict import StateDictOptions
        return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)

    def weights_finite(self) -> bool:
        bad = torch.zeros(1, device=self.device)
        for p in self.raw_model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if local.numel() and not bool(torch.isfinite(local).all()):
                bad.fill_(1.0)
                break
        if _distributed():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bad.item() == 0

    def save_checkpoint(self, step: int) -> Optional[Path]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
        if not self.weights_finite():
            raise TrainingDiverged(f"non-finite weights at step {step}: checkpoint not written; last good "
                                   f"checkpoint: {self.last_checkpoint or 'none'}")
        opts = self._sd_options(cpu_offload=True)
        model_sd = get_model_state_dict(self.raw_model, options=opts)
        optim_sd = get_optimizer_state_dict(self.raw_model, self.optimizer, options=opts)
        ema_sd = self.ema.state_dict(self.raw_model, keep=self.dist.is_main) if self.ema is not None else None
        folder = self.ckpt_dir(step)
        path = folder / f"{step:07d}.pt"
        if self.dist.is_main:
            ckpt: dict[str, Any] = {
                "model": model_sd, "optimizer": optim_sd, "steps": step, "args": _plain_args(self.args),
                "gpt_config": self.gpt_config, "scaler": self.scaler.state_dict(),
                "trainer_state": {"epoch": self.sampler.epoch_of(step), "steps_per_epoch":
                                  self.sampler.steps_per_epoch, "dataset_len": len(self.dataset),
                                  "global_batch_size": self.global_batch, "seed": self.args.global_seed,
                                  "world_size": self.dist.world_size, "data_parallel": self.args.data_parallel,
                                  "total_steps": self.total_steps},
            }
            if ema_sd is not None:
                ckpt["ema"] = ema_sd
            save_atomic(ckpt, path)
            self.log(f"Saved checkpoint to {path}")
            if folder == self.const_ckpt_dir:
                for removed in prune_checkpoints(folder, self.args):
                    self.log(f"removed old checkpoint {removed}")
        barrier()
        self.last_checkpoint = path
        return path

    def resume(self) -> int:
        """Load the checkpoint the original's rule picks; returns the step to continue from (0 if none)."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
        a = self.args
        path = find_resume_checkpoint(self.const_ckpt_dir, self.cd_dir / "checkpoints" if self.cd_dir else None,
                                      self.hold)
        if path is None:
            return 0
        if a.no_auto_resume:
            raise SystemExit(f"{self.experiment_dir} already has checkpoints ({path}); remove --no-auto-resume to "
                             "continue it, or choose another --sub-exp-dir")
        ckpt = read_checkpoint(path)
        model_sd = strip_prefixes(select_state_dict(ckpt, str(path), entries=("model",)))
        opts = self._sd_options(cpu_offload=False)
        if self.fsdp:
            set_model_state_dict(self.raw_model, model_sd, options=opts)
        else:
            load_state_dict_strict(self.raw_model, model_sd, source=str(path))
        osd = ckpt.get("optimizer")
        if osd:
            if osd.get("state") and all(isinstance(k, int) for k in osd["state"]):
                osd = optimizer_ids_to_names(osd, param_group_names(self.raw_model))
            elif not osd.get("state") and osd.get("param_groups") and \
                    all(isinstance(p, int) for g in osd["param_groups"] for p in g["params"]):
                osd = optimizer_ids_to_names(osd, param_group_names(self.raw_model))
            set_optimizer_state_dict(self.raw_model, self.optimizer, osd, options=opts)
        else:
            self.log(f"WARNING: {path} has no optimizer state; AdamW restarts from zero moments")
        if "scaler" in ckpt and ckpt["scaler"]:
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
        self.log(f"Initial state: steps={steps}, epochs={steps // self.sampler_steps_per_epoch()}")
        self.last_checkpoint = path
        return steps

    def sampler_steps_per_epoch(self) -> int:
        return max(len(self.dataset) // self.global_batch, 1)

    # ----- the step ---------------------------------------------------------------------------------------------
    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def no_sync(self, last: bool, accum: int):
        """Skip the gradient all-reduce on all but the last micro-batch of a step."""
        if accum == 1 or not self.dist.distributed:
            return contextlib.nullcontext()
        if self.fsdp:
            self.raw_model.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last else self.model.no_sync()

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokenizer is None:
            return x
        _, _, info = self.tokenizer.encode(x.to(self.device, non_blocking=True).float())
        return info[2].reshape(x.shape[0], -1)

    def train_step(self, step: int, codes: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, Any, float]:
        a = self.args
        b = codes.shape[0]
        z = codes.reshape(b, -1).to(self.device, non_blocking=True)
        c = labels.reshape(-1).to(self.device, non_blocking=True)
        if step == self._first_step:
            self.check_batch(z, c)
        # every random stream of the model (dropouts, label dropout) is a function of (seed, rank, step)
        torch.manual_seed(mix_seed(a.global_seed, self.dist.rank, step))
        lr = set_lr(self.optimizer, lr_for_step(self.schedule, step, a.original_lr_lag))
        accum = a.gradient_accumulation_steps
        total = torch.zeros((), device=self.device)
        for j, (zj, cj) in enumerate(zip(z.chunk(accum), c.chunk(accum), strict=True)):
            last = j == accum - 1
            with self.no_sync(last, accum):
                with self.autocast():
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

    def check_batch(self, z: torch.Tensor, c: torch.Tensor) -> None:
        if z.shape[1] != self.block_size:
            raise SystemExit(f"codes have {z.shape[1]} tokens but the tokenizer config has {self.block_size}")
        lo, hi = int(z.min()), int(z.max())
        if lo < 0 or hi >= self.vocab_size:
            raise SystemExit(f"code ids span [{lo}, {hi}], outside the vocabulary [0, {self.vocab_size})")
        if int(c.min()) < 0 or int(c.max()) >= self.args.num_classes:
            raise SystemExit(f"class labels span [{int(c.min())}, {int(c.max())}], outside [0, "
                             f"{self.args.num_classes}) (--num-classes)")

    # ----- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> dict:
        a, d = self.args, self.dist
        if d.is_main:
            self.experiment_dir.mkdir(parents=True, exist_ok=True)
            self.const_ckpt_dir.mkdir(parents=True, exist_ok=True)
            if self.cd_dir is not None:
                (self.cd_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        barrier()
        self.build_data()
        self.build_model()
        # resume into the plain module (DDP) before wrapping; FSDP loads after sharding
        self.wrap_model()
        self.build_optimizer()
        start = self.resume()
        self._first_step = start
        self.open_logs(start)
        self.log(f"{' '.join(sys.argv)}")
        self.log(f"GPT {a.gpt_model}: {self.n_params:,} parameters (vocab {self.vocab_size}, {self.block_size} tokens, "
                 f"{a.num_classes} classes); "
                 f"{(a.data_parallel if self.fsdp else 'ddp') if d.distributed else 'single process'} on "
                 f"{d.world_size} x {self.device}; precision {a.mixed_precision}; compile {self.compile}")
        n_decay = sum(p.numel() for p in self.optimizer.param_groups[0]["params"])
        n_plain = sum(p.numel() for p in self.optimizer.param_groups[1]["params"])
        self.log(f"AdamW: weight decay {a.weight_decay} on {len(self.optimizer.param_groups[0]['params'])} tensors "
                 f"({n_decay:,} local elements), none on {len(self.optimizer.param_groups[1]['params'])} "
                 f"({n_plain:,})")
        spe = self.sampler_steps_per_epoch()
        self.log(f"{len(self.dataset):,} samples, {spe} steps per epoch, global batch {self.global_batch} "
                 f"({self.local_batch} per rank); steps {start} -> {self.stop_step} of T = {self.total_steps} "
                 f"({a.lr_scheduler} schedule"
                 f"{', cool-down from step ' + str(self.hold) if self.hold is not None else ''})")
        result = {"start_step": start, "stop_step": self.stop_step, "checkpoint": None}
        if start >= self.stop_step:
            self.log(f"nothing to do: already at step {start} (stop step {self.stop_step})")
            result["checkpoint"] = str(self.last_checkpoint) if self.last_checkpoint else None
            result["steps"] = start
            return result

        loader = self.loader(start)
        window_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        window_gn = torch.zeros((), device=self.device, dtype=torch.float64)
        window_steps, t0 = 0, time.time()
        done = start
        lr = float("nan")
        for step, batch in zip(range(start, self.stop_step), loader, strict=False):
            x, labels = batch[0], batch[1]
            codes = self.tokenize(x)
            loss, grad_norm, lr = self.train_step(step, codes, labels)
            window_loss += loss.double()
            if grad_norm is not None:
                gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
                window_gn += gn.double()
            window_steps += 1
            done = step + 1
            if done % a.log_every == 0 or done == self.stop_step:
                stats = torch.stack([window_loss, window_gn]) / window_steps
                if _distributed():
                    dist.all_reduce(stats)
                    stats /= d.world_size
                avg_loss, avg_gn = stats.tolist()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                dt = time.time() - t0
                sps = window_steps / max(dt, 1e-9)
                self.open_logs(done)
                if not math.isfinite(avg_loss):
                    raise TrainingDiverged(f"non-finite training loss at step {done}; last good checkpoint: "
                                           f"{self.last_checkpoint or 'none'}")
                self.log(f"(step={done:07d}) Train Loss: {avg_loss:.4f}, Train Steps/Sec: {sps:.2f}, lr: {lr:.4e}"
                         + (f", grad norm: {avg_gn:.3f}" if a.max_grad_norm != 0.0 else ""))
                record = {"train_loss": avg_loss, "lr": lr, "train_steps_per_sec": sps,
                          "images_per_sec": sps * self.global_batch,
                          "tokens_per_sec": sps * self.global_batch * self.block_size,
                          "epoch": self.sampler.epoch_of(step)}
                if a.max_grad_norm != 0.0:
                    record["grad_norm"] = avg_gn
                if self.device.type == "cuda":
                    record["max_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
                self.writer.log(record, step=done)
                window_loss.zero_()
                window_gn.zero_()
                window_steps, t0 = 0, time.time()
            if done % a.ckpt_every == 0 or done == self.total_steps or done == self.stop_step:
                self.save_checkpoint(done)
        if done < self.stop_step:
            raise RuntimeError(f"the data loader stopped early at step {done} (expected {self.stop_step})")
        self.log("Done!")
        result["checkpoint"] = str(self.last_checkpoint) if self.last_checkpoint else None
        result["steps"] = done
        return result

    def close(self) -> None:
        for msg in self._pending:  # a failure before the log folder was opened
            print(msg, flush=True)
        self._pending = []
        if self.logger is not None:
            close_logger(self.logger)
        if self.writer is not None:
            self.writer.close()


def main(argv=None) -> dict:
    args = parse_args(argv)
    dist_info = init_distributed(args.device)
    trainer = Trainer(args, dist_info)
    try:
        return trainer.run()
    except TrainingDiverged as exc:
        trainer.log(f"ERROR: {exc}")
        print(f"[train_c2i] {exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_DIVERGED)
    finally:
        trainer.close()
        cleanup()


if __name__ == "__main__":
    main()
