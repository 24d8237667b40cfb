"""GPT training-step throughput (the step of autoregressive.train_c2i): forward + cross-entropy + backward + clip +
AdamW (+ EMA) on random codes, in steps/s, images/s and tokens/s, with peak memory and the GEMM FLOP/s floor.

    python benchmarks/bench_train_c2i.py --gpt-model GPT-B --batch 32 --precision bf16 --device cuda
    python benchmarks/bench_train_c2i.py --gpt-model GPT-B --batch 32 --compile --ema --device cuda
    python benchmarks/bench_train_c2i.py --gpt-model GPT-B --batch 32 --tok-config configs/vq/VQ_XLXXL256.yaml \
        --online-tokenizer            # adds the per-step tokenizer encode of --dataset imagenet

Vocabulary and length default to the released setting (16384 codes, 256 tokens, 1000 classes) or come from
``--tok-config``. The floor is the step's counted FLOPs (torch.utils.flop_counter, forward + backward; the
optimiser excluded) divided by the measured GEMM FLOP/s of this device at the autocast dtype. Single device,
no DDP communication. On CPUs without native bf16 matrix units use ``--precision none`` (bf16 GEMMs are emulated
there and both the step and the FLOP/s probe crawl).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_tokenizer import count_flops, measure_gemm_flops, peak_memory_mb, time_steps  # noqa: E402

from autoregressive.models.gpt import GPT_models  # noqa: E402
from tokenizer import tokenizer_info  # noqa: E402
from utils.cli import HelpFormatter  # noqa: E402
from utils.distributed import pick_device  # noqa: E402
from utils.ema import EMA  # noqa: E402
from utils.training import PRECISIONS, param_groups  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--gpt-model", choices=list(GPT_models), default="GPT-B",
                   help="GPT size preset to time (random weights)")
    p.add_argument("--tok-config", default=None, help="take vocabulary, length and image size from this tokenizer")
    p.add_argument("--online-tokenizer", action="store_true", help="also encode random images with the tokenizer "
                   "(random weights) every step, as --dataset imagenet does")
    p.add_argument("--vocab-size", type=int, default=16384,
                   help="codebook size, i.e. the output head width (ignored with --tok-config)")
    p.add_argument("--block-size", type=int, default=256,
                   help="image tokens per sequence (ignored with --tok-config)")
    p.add_argument("--num-classes", type=int, default=1000,
                   help="class labels of the GPT (the random labels lie in [0, N))")
    p.add_argument("--batch", type=int, default=32, help="sequences per step (per GPU)")
    p.add_argument("--reps", type=int, default=5, help="timed steps after --warmup untimed ones")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps before the timed ones (allocations, kernel selection, compilation)")
    p.add_argument("--precision", choices=list(PRECISIONS), default="bf16", help="autocast dtype")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the GPT (compilation happens in the --warmup steps)")
    p.add_argument("--ema", action="store_true", help="include the EMA update (decay 0.9999) in every step")
    p.add_argument("--max-grad-norm", type=float, default=1.0,
                   help="gradient clipping norm, as train_c2i (0: no unscale and no clipping)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (None or 0: PyTorch's default)")
    p.add_argument("--no-flops", action="store_true",
                   help="skip the FLOP count and the GEMM FLOP/s probe (no floor is reported)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    dtype = PRECISIONS[args.precision]
    vocab, block, image_size = args.vocab_size, args.block_size, 256
    tokenizer = None
    if args.tok_config:
        info = tokenizer_info(args.tok_config)
        vocab, block, image_size = info["codebook_size"], info["num_tokens"], info["image_size"]
        if args.online_tokenizer:
            from tokenizer import build_tokenizer
            tokenizer = build_tokenizer(args.tok_config).to(device).eval().requires_grad_(False)
    elif args.online_tokenizer:
        raise SystemExit("--online-tokenizer needs --tok-config")

    torch.manual_seed(0)
    raw = GPT_models[args.gpt_model](vocab_size=vocab, block_size=block, num_classes=args.num_classes).to(device)
    raw.train()
    model = torch.compile(raw) if args.compile else raw
    opt = torch.optim.AdamW(param_groups(raw, 0.05, lambda _, param: param.dim() < 2), lr=1e-4, betas=(0.9, 0.95),
                            **({"fused": True} if device.type == "cuda" else {}))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema = EMA(raw) if args.ema else None
    z = torch.randint(0, vocab, (args.batch, block), device=device)
    c = torch.randint(0, args.num_classes, (args.batch,), device=device)
    x = torch.rand(args.batch, 3, image_size, image_size, device=device) * 2 - 1
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def fwd_bwd():
        codes = z
        if tokenizer is not None:
            with torch.no_grad():
                codes = tokenizer.encode(x)[2][2].reshape(args.batch, -1)
        with autocast:
            _, loss = model(cond_idx=c, idx=codes[:, :-1], targets=codes)
        scaler.scale(loss).backward()
        return loss

    def step():
        loss = fwd_bwd()
        if args.max_grad_norm:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(raw.parameters(), args.max_grad_norm)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(raw)
        return loss

    dt = time_steps(step, device, args.warmup, args.reps)
    n_params = sum(p.numel() for p in raw.parameters())
    out = {"gpt_model": args.gpt_model, "params": n_params, "device": str(device), "precision": args.precision,
           "compile": args.compile, "ema": args.ema, "online_tokenizer": tokenizer is not None, "batch": args.batch,
           "tokens_per_seq": block, "step_s": dt, "steps_per_s": 1 / dt, "images_per_s": args.batch / dt,
           "tokens_per_s": args.batch * block / dt, "peak_memory_mb": peak_memory_mb(device)}
    if not args.no_flops:
        flops = count_flops(lambda: (fwd_bwd(), opt.zero_grad(set_to_none=True)))
        gemm = measure_gemm_flops(device, dtype or torch.float32)
        out.update({"step_flops": flops, "gemm_flops_per_s": gemm, "floor_step_s": flops / gemm,
                    "fraction_of_floor": (flops / gemm) / dt})
    width = max(map(len, out))
    for key, value in out.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    return out


if __name__ == "__main__":
    main()
