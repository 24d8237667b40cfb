"""Benchmark autoregressive sampling of the c2i GPT: tokens/s and images/s with and without CFG.

At small batch, decoding is memory-bandwidth bound: every step streams all transformer and output-head
weights once. The benchmark measures the device's read bandwidth and prints the rate it implies
(bandwidth / bytes streamed per step: the bandwidth floor on step time) next to the achieved rate.

    python benchmarks/bench_gpt_sampling.py --gpt-model GPT-B --batch 1 --device cpu
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoregressive import GPT_models, generate  # noqa: E402
from autoregressive.models.generate import sample_generators  # noqa: E402
from autoregressive.models.gpt import small_batch_cpu_matmul  # noqa: E402
from utils.distributed import pick_device  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(device: torch.device, mbytes: int = 512, repeats: int = 5) -> tuple[float, float]:
    """(read, copy) bandwidth in bytes/s, each the best of a few passes over a tensor far larger than caches.

    Read bandwidth (a sum over the tensor) is what weight streaming needs; copy bandwidth counts the bytes
    read plus the bytes written.
    """
    n = mbytes * (1 << 20) // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    results = []
    for op, nbytes in ((lambda: src.sum(), n * 4), (lambda: dst.copy_(src), 2 * n * 4)):
        op()
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            op()
            sync(device)
            best = min(best, time.perf_counter() - t)
        results.append(nbytes / best)
    return results[0], results[1]


def streamed_bytes(model: torch.nn.Module, rows: int, seq: int) -> tuple[int, int]:
    """(weight bytes read per decode step, KV-cache bytes) for ``rows`` sequences of cache length ``seq``."""
    skip = {"tok_embeddings.weight", "cls_embedding.embedding_table.weight", "positional_embedding"}
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n not in skip)
    attn = model.layers[0].attention
    seq = (seq + 7) // 8 * 8
    element = model.tok_embeddings.weight.element_size()
    cache = 2 * len(model.layers) * rows * attn.n_kv_head * seq * attn.head_dim * element
    return weights, cache


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB allocated (CUDA peak)"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return f"{rss_kib / 2**20:.2f} GiB process peak RSS"


def run(model, args, device, cfg_scale: float) -> float:
    cond = torch.arange(args.batch, device=device) % model.num_classes
    kwargs = dict(cfg_scale=cfg_scale, cfg_schedule=args.cfg_schedule,
                  cfg_schedule_kwargs={"window_start": 0.18} if args.cfg_schedule == "step" else {},
                  top_k=args.top_k, generator=sample_generators(0, range(args.batch)))
    runner = args.compiled if args.compiled is not None else model
    # Warm-up (allocations, kernels); compiled graphs depend on the cache length, so then use the full length.
    for _ in range(args.warmup):
        generate(runner, cond, args.steps if args.compiled is not None else min(args.steps, 8), **kwargs)
    best = float("inf")
    for _ in range(args.repeats):
        sync(device)
        t = time.perf_counter()
        generate(runner, cond, args.steps, **kwargs)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--gpt-model", default="GPT-B", choices=sorted(GPT_models),
                   help="GPT size preset to time (random weights)")
    p.add_argument("--batch", type=int, default=1, help="images per generate() call (doubled rows with CFG)")
    p.add_argument("--cfg-scale", type=float, default=1.75, help="scale of the guided run (> 1)")
    p.add_argument("--cfg-schedule", default="constant",
                   help="guidance schedule of the CFG run, one of autoregressive.models.generate.CFG_SCHEDULES "
                        "(constant, linear, linear_re, triangular, rectangular, step, cosine, sigmoid; step uses "
                        "window_start 0.18, the others their defaults)")
    p.add_argument("--steps", type=int, default=256, help="tokens per image (max_new_tokens)")
    p.add_argument("--vocab-size", type=int, default=16384, help="codebook size, i.e. the output head width")
    p.add_argument("--num-classes", type=int, default=1000,
                   help="class labels of the GPT (image i of a batch gets class i mod N)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0: no top-k filter)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                   help="dtype the model and its KV cache are cast to (no autocast), like the samplers' --precision")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (reduce-overhead on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed generate() calls per mode before the timed ones (up to 8 tokens each, or the full "
                        "--steps with --compile)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per mode; the best is reported")
    p.add_argument("--no-small-batch-matmul", action="store_true",
                   help="use plain F.linear on CPU for 2..8 rows (to measure the weight@x.T path's gain)")
    args = p.parse_args(argv)
    if args.cfg_scale <= 1.0:
        p.error("--cfg-scale must be > 1 (the unguided run is always measured too)")

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    with torch.device("meta"):
        model = GPT_models[args.gpt_model](vocab_size=args.vocab_size, block_size=args.steps,
                                           num_classes=args.num_classes)
    model = model.to_empty(device=device)
    with torch.no_grad():  # random weights; speed does not depend on their values
        for param in model.parameters():
            param.normal_(0.0, 0.02)
    model = model.to(dtype).eval()
    args.compiled = None
    if args.compile:
        mode = "reduce-overhead" if device.type == "cuda" else None
        args.compiled = torch.compile(model, mode=mode, fullgraph=True)

    bandwidth, copy_bandwidth = measure_bandwidth(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"device {device} ({torch.get_num_threads()} threads)" if device.type == "cpu" else f"device {device} "
          f"({torch.cuda.get_device_name(device)})")
    print(f"model {args.gpt_model}: {n_params / 1e6:.1f}M params, {args.dtype}, batch {args.batch}, "
          f"{args.steps} tokens/image, compile={args.compile}")
    print(f"measured memory bandwidth: read {bandwidth / 1e9:.1f} GB/s, copy (read+write) "
          f"{copy_bandwidth / 1e9:.1f} GB/s; floor = weight+KV bytes per step / read bandwidth")
    print(f"{'mode':<10}{'rows':>5}{'s/batch':>10}{'steps/s':>10}{'tokens/s':>10}{'images/s':>10}"
          f"{'bound steps/s':>15}{'of bound':>10}{'KV cache':>11}")
    for label, scale in (("no-CFG", 1.0), (f"CFG {args.cfg_scale:g}", args.cfg_scale)):
        rows = args.batch * (2 if scale > 1 else 1)
        weights, cache = streamed_bytes(model, rows, args.steps + 1)
        floor = bandwidth / (weights + cache)  # steps/s if the step time were only the memory traffic
        with small_batch_cpu_matmul(not args.no_small_batch_matmul):
            seconds = run(model, args, device, scale)
        steps_s = args.steps / seconds
        print(f"{label:<10}{rows:>5}{seconds:>10.2f}{steps_s:>10.1f}{args.batch * steps_s:>10.1f}"
              f"{args.batch / seconds:>10.3f}{floor:>15.1f}{steps_s / floor:>9.0%} {cache / 2**20:>8.1f}MiB")
    print(f"weights streamed per step: {weights / 2**20:.1f} MiB; peak memory: {peak_memory(device)}")


if __name__ == "__main__":
    main()
