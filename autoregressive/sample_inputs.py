"""What every sampling job shares, resolved and checked once: model flags settled from the checkpoints, the loaded
models (:class:`Sampler`), the flags' :class:`SamplingConfig`, the inputs' identity (:func:`run_key`) and the run
settings written as ``sample_settings.json``.

Inputs are identified without hashing whole checkpoints on every run: :func:`file_identity` records size, mtime and
the sha256 of the first and last MiB (the run settings record it; the run key is derived from it).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from autoregressive import generate, load_gpt
from autoregressive.loading import gpt_build_config, settle_gpt_flags
from autoregressive.models.generate import SamplingConfig, sample_generators
from autoregressive.models.static_decode import StaticDecoder, packed_kernel
from tokenizer import load_tokenizer, settle_tokenizer_config, tokenizer_info
from utils.checkpoint import CheckpointError, resolve_checkpoint, sha256_file
from utils.data import to_uint8
from utils.training import storage_dtype


def class_names(args: argparse.Namespace) -> list[str]:
    if args.class_names:
        names = [line.strip() for line in Path(args.class_names).read_text().splitlines() if line.strip()]
        if len(names) != args.num_classes:
            raise ValueError(f"{args.class_names} lists {len(names)} names for {args.num_classes} classes")
        return names
    if args.num_classes == 1000:
        from torchvision.models import ResNet50_Weights
        return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    return [f"class{i}" for i in range(args.num_classes)]


def parse_class_ids(text: str, num_classes: int) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as exc:
        raise ValueError(f"--class-idx must be comma-separated integers, got {text!r}") from exc
    bad = [i for i in ids if not 0 <= i < num_classes]
    if bad or not ids:
        raise ValueError(f"class ids {bad or text!r} are outside [0, {num_classes})")
    return ids


def fid_labels(seed: int, indices: list[int], num_classes: int) -> torch.Tensor:
    """Class of image ``i``: uniform, from its own generator (independent of process count and batching)."""
    gens = sample_generators(seed + 7919, indices)
    return torch.tensor([int(torch.randint(num_classes, (), generator=g)) for g in gens], dtype=torch.long)


def settle_models(args: argparse.Namespace) -> None:
    """Model flags from the checkpoints: each flag not given takes the checkpoint's value (else its old default), a
    given one must agree with the checkpoint (one ConfigError names the flag and both values); ``args.tok_config``
    becomes the tokenizer's config and ``args.gpt_config`` what ``load_gpt`` builds."""
    description = settle_gpt_flags(args, args.gpt_ckpt)
    args.tok_config = settle_tokenizer_config(args.vq_ckpt, args.tok_config, description)
    info = tokenizer_info(args.tok_config)
    args.gpt_config = gpt_build_config(args, description, info["codebook_size"], info["num_tokens"],
                                       f"the tokenizer {tokenizer_label(args)}")


def tokenizer_label(args: argparse.Namespace) -> str:
    """The tokenizer config's file, or the checkpoint that stores it, for messages and the CFG search table."""
    return str(args.tok_config) if isinstance(args.tok_config, (str, Path)) else f"stored in {args.vq_ckpt}"


class Sampler:
    """Loaded models plus the sampling settings; ``images(labels, indices)`` -> uint8 NHWC."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device = args, device
        self.tok = load_tokenizer(args.tok_config, resolve_checkpoint(args.vq_ckpt), device=device)
        size = args.image_size or self.tok.image_size
        if size != self.tok.image_size:
            raise ValueError(f"--image-size {size} does not match the tokenizer's {self.tok.image_size}")
        try:
            self.gpt = load_gpt(args.gpt_config, resolve_checkpoint(args.gpt_ckpt), device=device,
                                dtype=storage_dtype(args.precision))
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}\nThe GPT was built for the tokenizer {tokenizer_label(args)} (vocabulary "
                                  f"{self.tok.codebook_size}, {self.tok.num_tokens} tokens) and --num-classes "
                                  f"{args.num_classes}; a GPT trained for another tokenizer cannot be used.") from exc
        self.decoder = None
        if args.decode == "static":  # (resolve_engine refused static options with the eager loop)
            self.decoder = StaticDecoder(self.gpt, args.per_proc_batch_size, compile=decode_compile(args, device),
                                         attention=args.attention, cpu_prepack=args.cpu_prepack)

    @torch.no_grad()
    def images(self, labels: torch.Tensor, indices: list[int], cfg_scale: float,
               schedule_kwargs: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        a = self.args
        kwargs = default_schedule_kwargs(a) if schedule_kwargs is None else schedule_kwargs
        config = sampling_config_of(a, cfg_scale, kwargs)
        labels = labels.to(self.device)
        gens = config.generators(indices)
        if self.decoder is None:
            codes = generate(self.gpt, labels, self.tok.num_tokens, config, generator=gens)
        else:
            codes = self.decoder.generate(labels, self.tok.num_tokens, config, generator=gens)
        pixels = self.tok.decode_code(codes, self.tok.latent_shape(len(indices))).float()
        if a.image_size_eval and a.image_size_eval != pixels.shape[-1]:
            pixels = torch.nn.functional.interpolate(pixels, size=a.image_size_eval, mode="bicubic")
        return to_uint8(pixels).cpu().numpy(), codes.cpu().numpy()


def sampling_config_of(args: argparse.Namespace, cfg_scale: float, schedule_kwargs: dict) -> SamplingConfig:
    """The flags' SamplingConfig at one guidance scale and set of schedule arguments (a search varies those)."""
    return SamplingConfig(cfg_scale=cfg_scale, cfg_schedule=args.cfg_schedule, cfg_schedule_kwargs=schedule_kwargs,
                          cfg_interval=args.cfg_interval, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, seed=args.global_seed)


def decode_compile(args: argparse.Namespace, device: torch.device) -> str:
    """The StaticDecoder compile mode of these flags (``--compile`` picks torch.compile for the device)."""
    if args.compile:
        return "reduce-overhead" if device.type == "cuda" else "default"
    return args.decode_compile


def decode_inputs(args: argparse.Namespace) -> dict:
    """The decode settings that can change tokens (fused attention, inductor kernels): part of the run key only then,
    so eager and the bit-identical static paths share their results."""
    if args.decode == "eager":
        return {}
    compiled = args.compile or args.decode_compile in ("default", "reduce-overhead")
    if args.attention == "math" and not compiled and not args.cpu_prepack:
        return {}
    packed = ""
    if args.cpu_prepack:  # the kernel that will run (auto resolves per machine and batch), not the flag's value
        packed = "/cpu-prepack-" + packed_kernel(args.cpu_prepack, args.per_proc_batch_size,
                                                 storage_dtype(args.precision), compiled)
    return {"decode": f"{'compiled' if compiled else args.decode_compile}/{args.attention}{packed}"}


def default_schedule_kwargs(args: argparse.Namespace) -> dict:
    return {"window_start": args.step_start_ratio} if args.cfg_schedule == "step" else {}


def settings(args: argparse.Namespace, world_size: int, cfg_scale: float, schedule_kwargs: dict | None = None) -> dict:
    out = {k: v for k, v in vars(args).items()}
    out.pop("_run_inputs", None)
    out.update(cfg_scale=cfg_scale, world_size=world_size, tf32=not args.no_tf32, run_key=run_key(args),
               run_inputs=run_inputs(args),
               cfg_schedule_kwargs=default_schedule_kwargs(args) if schedule_kwargs is None else schedule_kwargs,
               created=time.strftime("%Y-%m-%d %H:%M:%S"))
    return out


def run_inputs(args) -> dict:
    """Everything besides the CFG scale and schedule that changes the samples or their metrics (computed once)."""
    if getattr(args, "_run_inputs", None) is None:
        ref = args.gt_npz_path
        args._run_inputs = {
            "gpt_ckpt": file_identity(resolve_checkpoint(args.gpt_ckpt)),
            "vq_ckpt": file_identity(resolve_checkpoint(args.vq_ckpt)),
            "tok_config_sha256": config_sha256(args.tok_config), "gpt_model": args.gpt_model,
            "num_classes": args.num_classes, "num_fid_samples": args.num_fid_samples, "precision": args.precision,
            "top_k": args.top_k, "top_p": args.top_p, "temperature": args.temperature,
            "cfg_interval": args.cfg_interval, "image_size_eval": args.image_size_eval, "seed": args.global_seed,
            "qk_norm": args.qk_norm, "gpt_2d": args.gpt_2d,
            "reference": file_identity(ref) if ref and Path(ref).is_file() else None, **decode_inputs(args)}
    return args._run_inputs


PARTIAL_BYTES = 1 << 20


def file_identity(path: str | os.PathLike) -> dict:
    """Size, modification time and the sha256 of the first and last MiB of a file (the whole file when it is at most
    2 MiB): identifies a checkpoint without reading gigabytes. A torch checkpoint is a zip whose end (the central
    directory) lists every member's CRC-32, so its last MiB changes with any tensor; a copy with a new mtime counts
    as another input (its samples are redrawn, never wrongly reused)."""
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(PARTIAL_BYTES))
        if st.st_size > 2 * PARTIAL_BYTES:
            fh.seek(-PARTIAL_BYTES, os.SEEK_END)
        h.update(fh.read())  # the rest (<= 1 MiB) of a small file, else the last MiB
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "partial_sha256": h.hexdigest()}


def config_sha256(config) -> str:
    """sha256 of a config file, or of a stored config's canonical JSON (a checkpoint that carries its config)."""
    if isinstance(config, (str, Path)):
        return sha256_file(config)
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def run_key(args) -> str:
    """8 hex digits identifying :func:`run_inputs`: part of every result name, so results never collide."""
    return hashlib.sha256(json.dumps(run_inputs(args), sort_keys=True).encode()).hexdigest()[:8]


def check_out_folder(folder: Path, args) -> None:
    """An existing result folder (``--out``) may be reused only for the same inputs: its run-settings JSON must carry
    this run's key."""
    recorded = folder / "sample_settings.json"
    if recorded.is_file():
        old = json.loads(recorded.read_text()).get("run_key")
        if old != run_key(args):
            raise ValueError(f"{folder} holds samples of other inputs (run key {old}, this run {run_key(args)}); "
                             "choose another --out or delete the folder")
