"""Checkpoint save / load time and peak host memory per process: full state (gathered on rank 0, one .pt) against
sharded (torch.distributed.checkpoint, every rank writes its own shards), for a tokenizer with its discriminator and
both AdamW optimisers, under FSDP2.

    torchrun --nproc_per_node=2 benchmarks/bench_checkpoint.py --config configs/vq/VQ_BL256.yaml --format full
    torchrun --nproc_per_node=2 benchmarks/bench_checkpoint.py --config configs/vq/VQ_BL256.yaml --format sharded

One format per launch, so that each process's peak resident memory (``ru_maxrss``) belongs to that format alone. The
optimiser moments are allocated by one zero-learning-rate step, as a resumed run has them. Rank 0 prints one line per
phase: seconds, and the peak resident memory of the process with the most (the floor: the process's own share of the
state, printed as "resident before").
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenizer import build_tokenizer, read_tokenizer_config  # noqa: E402
from tokenizer.losses import build_loss  # noqa: E402
from utils import sharded_checkpoint as sharded  # noqa: E402
from utils import training  # noqa: E402
from utils.checkpoint import load_checkpoint_file, save_atomic  # noqa: E402
from utils.distributed import gather_objects  # noqa: E402


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def current_gib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30


def worst(value: float) -> float:
    """The largest value over the ranks."""
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def build(config: str, fsdp: bool):
    torch.manual_seed(0)
    cfg = read_tokenizer_config(config)
    model = build_tokenizer(cfg)
    loss = build_loss(cfg, pretrained=False)
    if fsdp:
        training.wrap_fsdp(model, [*model.vit_encoder.transformer, *model.vit_decoder.transformer], "fsdp", "none")
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    optimizer_disc = torch.optim.AdamW(loss.discriminator.parameters(), lr=0.0)
    for module, opt in ((model, optimizer), (loss.discriminator, optimizer_disc)):  # allocate the moments
        for p in module.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, loss, optimizer, optimizer_disc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/vq/VQ_BL256.yaml")
    parser.add_argument("--format", choices=["full", "sharded"], required=True)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder, removed after)")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    model, loss, optimizer, optimizer_disc = build(args.config, fsdp=True)
    chosen = str(args.dir or tempfile.mkdtemp(prefix="bench_ckpt_")) if rank == 0 else None
    base = Path(gather_objects(chosen)[0])  # rank 0's folder on every rank
    n_params = sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in loss.discriminator.parameters())
    before = worst(current_gib())
    extra = {"discriminator": loss.discriminator.state_dict(), "optimizer_disc": optimizer_disc.state_dict()}
    dist.barrier()
    start = time.perf_counter()
    if args.format == "sharded":
        path = sharded.save_sharded(base / "0000001", sharded.training_state(model, optimizer, None), extra, rank == 0)
    else:
        model_state, optimizer_state = training.full_state_dicts(model, optimizer)
        path = base / "0000001.pt"
        if rank == 0:
            save_atomic({"model": model_state, "optimizer": optimizer_state, **extra}, path)
        del model_state, optimizer_state
        dist.barrier()
    save_s = time.perf_counter() - start
    save_peak = worst(peak_gib())
    size = sum(f.stat().st_size for f in ([path] if path.is_file() else path.iterdir())) / 2 ** 30
    dist.barrier()
    start = time.perf_counter()
    if args.format == "sharded":
        sharded.load_sharded(path, model, optimizer, None)
    else:
        ckpt = load_checkpoint_file(path, mmap=True)  # every rank maps the file and takes its shards
        training.load_model_state(model, ckpt["model"], fsdp=True, source=str(path))
        training.load_optimizer_state(model, optimizer, ckpt["optimizer"])
        del ckpt
    dist.barrier()
    load_s = time.perf_counter() - start
    load_peak = worst(peak_gib())
    if rank == 0:
        print(f"{Path(args.config).stem} {n_params / 1e6:.0f}M parameters (tokenizer + discriminator), {world} FSDP2 "
              f"processes, format {args.format}: {size:.2f} GiB on disk; resident before {before:.2f} GiB per "
              f"process; save {save_s:.1f} s (peak {save_peak:.2f} GiB), load {load_s:.1f} s (peak "
              f"{load_peak:.2f} GiB)", flush=True)
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
