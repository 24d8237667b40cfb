"""Throughput of the evaluation stack: Inception features, FID algebra (sqrtm vs eigh), precision/recall.

    python benchmarks/bench_eval.py --device auto --inception-path FILE [--images 256] [--pr 10000]

Weights: any file evaluations.inception.load_inception accepts; without one, random weights (timing only).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_tokenizer import count_flops, measure_gemm_flops  # noqa: E402

from evaluations.inception import TFInceptionV3, load_inception, random_weights_, strict_fp32  # noqa: E402
from evaluations.metrics import FIDStatistics, precision_recall  # noqa: E402
from utils.cli import HelpFormatter  # noqa: E402
from utils.distributed import pick_device  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--inception-path", default=None,
                   help="Inception weights, any file evaluations.inception.load_inception accepts (None: random "
                        "weights, for timing only)")
    p.add_argument("--images", type=int, default=128,
                   help="random 256x256 images pushed through the Inception network for the images/s figure "
                        "(rounded up to whole batches)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per Inception forward pass (None: the evaluator's default, 64 on GPU, 16 on CPU)")
    p.add_argument("--pr", type=int, default=2000, help="feature rows per set for precision/recall")
    p.add_argument("--fid-dim", type=int, default=2048,
                   help="dimension of the synthetic mean/covariance for the FID timing (2048 = the Inception pool "
                        "features)")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    if args.batch_size is None:
        args.batch_size = 16 if device.type == "cpu" else 64
    if args.inception_path:
        model = load_inception(args.inception_path, device)
    else:  # seeded random weights: never time an all-zero network
        model = random_weights_(TFInceptionV3()).to(device)
    out = {"device": str(device)}

    x = torch.randint(0, 256, (args.batch_size, 3, 256, 256), dtype=torch.uint8, device=device)
    with torch.no_grad(), strict_fp32():
        model(x[:2])
        _sync(device)
        t0, done = time.perf_counter(), 0
        while done < args.images:
            model(x)
            done += len(x)
        _sync(device)
    out["inception_images_per_s"] = done / (time.perf_counter() - t0)
    with torch.no_grad():
        flops = count_flops(lambda: model(x[:1]))
    gemm = measure_gemm_flops(device, torch.float32)
    out["inception_gflop_per_image"] = flops / 1e9
    out["inception_gflop_per_s"] = out["inception_images_per_s"] * flops / 1e9
    out["gemm_fp32_gflop_per_s (floor)"] = gemm / 1e9
    out["inception_fraction_of_gemm_rate"] = out["inception_images_per_s"] * flops / gemm

    rng = np.random.default_rng(0)
    a = rng.normal(size=(args.fid_dim * 2, args.fid_dim))
    s1, s2 = np.cov(a[: args.fid_dim + 10], rowvar=False), np.cov(a[args.fid_dim - 10:], rowvar=False)
    st1, st2 = FIDStatistics(np.zeros(args.fid_dim), s1), FIDStatistics(np.zeros(args.fid_dim), s2)
    for method in ("eigh", "sqrtm"):
        t0 = time.perf_counter()
        st1.frechet_distance(st2, method=method)
        out[f"fid_{method}_s"] = time.perf_counter() - t0

    feats = rng.uniform(0, 2, size=(2 * args.pr, 2048)).astype(np.float32)
    t0 = time.perf_counter()
    precision_recall(feats[: args.pr], feats[args.pr:], device=device)
    _sync(device)
    out["precision_recall_s"] = time.perf_counter() - t0
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
