"""Tokenizer throughput: encode and decode images/s and peak memory, next to what the hardware allows.

    python benchmarks/bench_tokenizer.py --config configs/vq/VQ_SS256.yaml --batch 4 --device auto

Weights are random (throughput does not depend on them). The floor printed next to each number is the
model's FLOPs per image (counted with torch.utils.flop_counter) divided by the measured GEMM FLOP/s of this
device, i.e. the fastest the step could run if every FLOP ran at matmul speed.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenizer import build_tokenizer  # noqa: E402
from utils import cpu_kernels  # noqa: E402
from utils.distributed import pick_device  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_gemm_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Achieved FLOP/s of a square matmul: the practical compute ceiling of this device and dtype."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def timed(fn, device: torch.device, reps: int) -> float:
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / reps


def time_steps(step, device: torch.device, warmup: int, reps: int) -> float:
    """Seconds per ``step()``: ``warmup`` untimed calls, then the peak-memory counter is reset and ``reps`` timed."""
    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(reps):
        step()
    sync(device)
    return (time.perf_counter() - start) / reps


def count_flops(fn) -> int:
    """FLOPs of ``fn`` as PyTorch's operators count them; the native CPU kernels (invisible to the counter) are
    turned off meanwhile, so a Winograd convolution counts as the direct convolution it replaces."""
    with cpu_kernels.disabled(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB -> MiB)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/vq/VQ_SS256.yaml", help="tokenizer YAML")
    p.add_argument("--batch", type=int, default=4, help="images per call")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions after one warm-up")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="autocast dtype (fp32 = none)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = DTYPES[args.dtype]
    torch.set_grad_enabled(False)
    with torch.device(device):  # random init on the device: no CPU copy of a multi-GB model
        model = build_tokenizer(args.config).eval()
    size = model.image_size
    x = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def encode():
        with autocast:
            return model.encode(x)

    quant, _, info = encode()
    codes = info[2]

    def decode():
        with autocast:
            return model.decode_code(codes, quant.shape)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_enc, t_dec = timed(encode, device, args.reps), timed(decode, device, args.reps)
    f_enc, f_dec = count_flops(encode), count_flops(decode)
    gemm = measure_gemm_flops(device, dtype if device.type == "cuda" else torch.float32)
    params = sum(p.numel() for p in model.parameters())
    result = {
        "config": args.config, "device": str(device), "threads": torch.get_num_threads(), "dtype": args.dtype,
        "batch": args.batch, "params_M": params / 1e6,
        "encode_images_per_s": args.batch / t_enc, "decode_images_per_s": args.batch / t_dec,
        "encode_GFLOP_per_image": f_enc / args.batch / 1e9, "decode_GFLOP_per_image": f_dec / args.batch / 1e9,
        "gemm_TFLOPs_measured": gemm / 1e12,
        "encode_images_per_s_floor": gemm / (f_enc / args.batch),
        "decode_images_per_s_floor": gemm / (f_dec / args.batch),
        "peak_memory_MiB": peak_memory_mb(device),
    }
    print(f"tokenizer benchmark: {args.config} ({params / 1e6:.1f}M params) on {device} "
          f"[{torch.get_num_threads()} threads, {args.dtype}], batch {args.batch}")
    print(f"  device GEMM throughput (measured):  {gemm / 1e12:.3f} TFLOP/s")
    for name, t, f in (("encode", t_enc, f_enc), ("decode", t_dec, f_dec)):
        achieved = f / t
        print(f"  {name}: {args.batch / t:8.2f} images/s   {f / args.batch / 1e9:7.1f} GFLOP/image   "
              f"{achieved / 1e12:.3f} TFLOP/s achieved = {100 * achieved / gemm:.0f}% of GEMM peak "
              f"(ceiling {gemm / (f / args.batch):.2f} images/s)")
    print(f"  peak memory: {result['peak_memory_MiB']:.0f} MiB "
          f"({'CUDA allocated' if device.type == 'cuda' else 'process RSS'})")
    return result


if __name__ == "__main__":
    main()
