"""Benchmark autoregressive sampling of the c2i GPT: tokens/s and images/s with and without CFG.

At small batch, decoding is memory-bandwidth bound: every step streams all transformer and output-head
weights once. The benchmark measures the device's read bandwidth and prints the rate it implies
(bandwidth / bytes streamed per step: the bandwidth floor on step time) next to the achieved rate.

    python benchmarks/bench_gpt_sampling.py --gpt-model GPT-B --batch 1 8 --modes eager static --device cpu
    python benchmarks/bench_gpt_sampling.py --gpt-model GPT-XXL --batch 1 32 256 --modes eager cudagraph --dtype bf16
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tokenizer import measure_gemm_flops  # noqa: E402

from autoregressive import GPT_models, generate  # noqa: E402
from autoregressive.models.fast_decode import small_batch_cpu_matmul  # noqa: E402
from autoregressive.models.generate import sample_generators  # noqa: E402
from autoregressive.models.static_decode import StaticDecoder  # noqa: E402
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


MODES = {  # --modes name -> None (eager generate) or StaticDecoder's (compile, attention) arguments
    "eager": None, "static": ("none", "math"), "static-packed": ("none", "math", "onednn"),
    "static-packed-fused": ("none", "fused", "onednn"),
    "static-native": ("none", "math", "native"), "static-native-fused": ("none", "fused", "native"),
    "cudagraph": ("cudagraph", "math"),
    "cudagraph-fused": ("cudagraph", "fused"), "compile": ("default", "math"),
    "reduce-overhead": ("reduce-overhead", "math"),
}


def time_generate(model, device: torch.device, batch: int, steps: int, cfg_scale: float, mode: str,
                  cfg_schedule: str = "constant", top_k: int = 0, warmup: int = 1, repeats: int = 1) -> float:
    """Best seconds for one batch of ``batch`` images of ``steps`` tokens in decode ``mode`` (see MODES)."""
    cond = torch.arange(batch, device=device) % model.num_classes
    kwargs = dict(cfg_scale=cfg_scale, cfg_schedule=cfg_schedule,
                  cfg_schedule_kwargs={"window_start": 0.18} if cfg_schedule == "step" else {},
                  top_k=top_k, generator=sample_generators(0, range(batch)))
    decoder = None if MODES[mode] is None else StaticDecoder(model, batch, *MODES[mode])
    try:
        def once(n: int) -> None:
            if decoder is None:
                generate(model, cond, n, **kwargs)
            else:
                decoder.generate(cond, n, **kwargs)

        # warm-up (allocations, kernels, graph capture / compilation: with a decoder at the full length)
        for _ in range(warmup):
            once(steps if decoder is not None else min(steps, 8))
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            once(steps)
            sync(device)
            best = min(best, time.perf_counter() - t)
        return best
    finally:
        if decoder is not None:
            decoder.close()


def random_gpt(name: str, device: torch.device, dtype: torch.dtype, steps: int = 256, vocab_size: int = 16384,
               num_classes: int = 1000):
    """A GPT preset with random weights made directly on ``device`` (no CPU copy of a multi-GB model)."""
    with torch.device("meta"):
        model = GPT_models[name](vocab_size=vocab_size, block_size=steps, num_classes=num_classes)
    model = model.to_empty(device=device)
    with torch.no_grad():  # random weights; speed does not depend on their values
        for param in model.parameters():
            param.normal_(0.0, 0.02)
    return model.to(dtype).eval()


def measure(model, device: torch.device, batches, modes, cfg_scale: float, steps: int, bandwidth: float,
            gemm: float, unguided: bool = True, **kwargs) -> list[dict]:
    """One row per (batch, mode, guidance): seconds per batch, tokens/s, images/s, and the floor of a step (the
    larger of weight+KV bytes / read bandwidth and 2 * params * rows FLOPs / GEMM rate)."""
    rows_out = []
    n_params = sum(p.numel() for n, p in model.named_parameters() if "embedding" not in n)
    for batch in batches:
        for mode in modes:
            for scale in ((1.0, cfg_scale) if unguided else (cfg_scale,)):
                rows = batch * (2 if scale > 1 else 1)
                weights, cache = streamed_bytes(model, rows, steps + 1)
                floor_s = max((weights + cache) / bandwidth, 2 * n_params * rows / gemm)
                seconds = time_generate(model, device, batch, steps, scale, mode, **kwargs)
                step_s = seconds / steps
                rows_out.append({"batch": batch, "mode": mode, "cfg_scale": scale, "rows": rows, "s_per_batch": seconds,
                                 "tokens_per_s": batch * steps / seconds, "images_per_s": batch / seconds,
                                 "step_ms": 1e3 * step_s, "floor_step_ms": 1e3 * floor_s,
                                 "fraction_of_floor": floor_s / step_s, "kv_cache_MiB": cache / 2 ** 20})
    return rows_out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--gpt-model", default="GPT-B", choices=sorted(GPT_models),
                   help="GPT size preset to time (random weights)")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="images per generate() call, one or more "
                   "(doubled rows with CFG)")
    p.add_argument("--modes", nargs="+", default=["eager"], choices=list(MODES),
                   help="decode paths: eager (generate(), the reference), static (StaticDecoder, no compile), "
                        "static-packed (the same with oneDNN-prepacked CPU weights), static-packed-fused (and "
                        "PyTorch's fused attention kernel), "
                        "cudagraph (StaticDecoder with a captured CUDA graph), cudagraph-fused (the same with "
                        "PyTorch's fused attention kernel), compile (torch.compile inductor), reduce-overhead "
                        "(torch.compile with CUDA graphs)")
    p.add_argument("--cfg-scale", type=float, default=1.75, help="scale of the guided run (> 1)")
    p.add_argument("--cfg-only", action="store_true", help="time only the guided run (not also the unguided one)")
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
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed generate() calls per mode before the timed ones (eager: up to 8 tokens each; "
                        "the static modes: the full --steps, which includes capture / compilation)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per mode; the best is reported")
    p.add_argument("--no-small-batch-matmul", action="store_true",
                   help="use plain F.linear on CPU for 2..8 rows (to measure the weight@x.T path's gain)")
    args = p.parse_args(argv)
    if args.cfg_scale <= 1.0:
        p.error("--cfg-scale must be > 1")

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    model = random_gpt(args.gpt_model, device, dtype, args.steps, args.vocab_size, args.num_classes)
    bandwidth, copy_bandwidth = measure_bandwidth(device)
    gemm = measure_gemm_flops(device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"device {device} ({torch.get_num_threads()} threads)" if device.type == "cpu" else f"device {device} "
          f"({torch.cuda.get_device_name(device)})")
    print(f"model {args.gpt_model}: {n_params / 1e6:.1f}M params, {args.dtype}, {args.steps} tokens/image")
    print(f"measured: read bandwidth {bandwidth / 1e9:.1f} GB/s, copy (read+write) {copy_bandwidth / 1e9:.1f} GB/s, "
          f"GEMM {gemm / 1e12:.2f} TFLOP/s; floor of a step = max(weight+KV bytes / read bandwidth, "
          f"2 x params x rows / GEMM rate)")
    with small_batch_cpu_matmul(not args.no_small_batch_matmul):
        rows = measure(model, device, args.batch, args.modes, args.cfg_scale, args.steps, bandwidth, gemm,
                       unguided=not args.cfg_only, cfg_schedule=args.cfg_schedule, top_k=args.top_k,
                       warmup=args.warmup, repeats=args.repeats)
    print(f"{'batch':>5} {'mode':<16}{'CFG':>5}{'rows':>5}{'s/batch':>9}{'tokens/s':>10}{'images/s':>10}"
          f"{'step ms':>9}{'floor ms':>9}{'of floor':>9}{'KV MiB':>8}")
    for r in rows:
        print(f"{r['batch']:>5} {r['mode']:<16}{r['cfg_scale']:>5g}{r['rows']:>5}{r['s_per_batch']:>9.3f}"
              f"{r['tokens_per_s']:>10.1f}{r['images_per_s']:>10.3f}{r['step_ms']:>9.3f}{r['floor_step_ms']:>9.3f}"
              f"{r['fraction_of_floor']:>8.0%}{r['kv_cache_MiB']:>8.0f}")
    weights, _ = streamed_bytes(model, 1, args.steps + 1)
    print(f"weights streamed per step: {weights / 2**20:.1f} MiB; peak memory: {peak_memory(device)}")
    return {"gpt_model": args.gpt_model, "device": str(device), "dtype": args.dtype, "params": n_params,
            "read_bandwidth_GBs": bandwidth / 1e9, "copy_bandwidth_GBs": copy_bandwidth / 1e9,
            "gemm_TFLOPs": gemm / 1e12, "rows": rows, "peak_memory": peak_memory(device)}


if __name__ == "__main__":
    main()
