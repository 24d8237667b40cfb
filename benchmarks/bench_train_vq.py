"""Tokenizer training-step throughput: one full iteration (generator forward + VQLoss + backward + clip + AdamW,
plus the discriminator update once it is active) in images/s and peak memory, next to the GEMM FLOP/s floor.

    python benchmarks/bench_train_vq.py --config configs/vq/VQ_BL256.yaml --batch 8 --precision bf16 --device cuda
    python benchmarks/bench_train_vq.py --config configs/vq/VQ_SS256.yaml --batch 8 --at-step 20000   # with the GAN

Weights are random, and so are the loss networks (LPIPS trunk, DINOv2 teacher, DINO-disc backbone) unless
``--pretrained-loss-nets``: the step time does not depend on them. ``--at-step S`` evaluates the iteration with
S completed steps, which decides which loss terms are on (auxiliary terms while S + 1 < aux_loss_end, the
discriminator from S + 1 >= disc_start). The floor is the step's counted FLOPs per image (torch.utils.flop_counter:
forward + backward of generator and losses; optimiser excluded) divided by the measured GEMM FLOP/s of this device.
Single device, no DDP communication.
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

from tokenizer import build_tokenizer, read_tokenizer_config  # noqa: E402
from tokenizer.losses import build_loss  # noqa: E402
from utils.cli import HelpFormatter  # noqa: E402
from utils.config import as_float  # noqa: E402
from utils.distributed import pick_device  # noqa: E402
from utils.training import PRECISIONS  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", default="configs/vq/VQ_SS256.yaml", help="tokenizer YAML")
    p.add_argument("--batch", type=int, default=4, help="images per step (per GPU)")
    p.add_argument("--reps", type=int, default=3, help="timed steps after --warmup untimed ones")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps before the timed ones (allocations, kernel selection)")
    p.add_argument("--at-step", type=int, default=0, help="completed iterations (selects the active loss terms)")
    p.add_argument("--precision", choices=list(PRECISIONS), default="bf16", help="autocast dtype")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--pretrained-loss-nets", action="store_true", help="download LPIPS/DINO weights (not needed)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one extra step)")
    p.add_argument("--config-overrides", nargs="*", default=[], help="dotted config overrides")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    dtype = PRECISIONS[args.precision]
    cfg = read_tokenizer_config(args.config, args.config_overrides)
    tr = cfg.get("trainer") or {}
    model = build_tokenizer(cfg).to(device).train()
    loss = build_loss(cfg, pretrained=args.pretrained_loss_nets, device=device).train()
    lr, wd = as_float(tr.get("lr", 1e-4), "trainer.lr"), as_float(tr.get("weight_decay", 0.0), "trainer.weight_decay")
    betas = (float(tr.get("beta1", 0.9)), float(tr.get("beta2", 0.95)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=wd)
    opt_d = torch.optim.AdamW(loss.discriminator.parameters(), lr=lr, betas=betas, weight_decay=wd)
    max_norm = float(tr.get("max_grad_norm", 0.0) or 0.0) or float("inf")
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    scaler_d = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    distill = bool(tr.get("distill_loss", False))
    s = args.at_step
    size = model.image_size
    x = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def forward_backward():
        with autocast():
            out = model(x, rec_loss=loss.aux_active(s), ret_inner_feat=distill)
            g, _ = loss.generator_loss(out, x, s)
        scaler.scale(g).backward()
        rec = out[0][0].detach()
        if loss.disc_active(s):
            opt_d.zero_grad(set_to_none=True)
            with autocast():
                d, _ = loss.discriminator_loss(x, rec, s)
            scaler_d.scale(d).backward()

    def step():
        opt.zero_grad(set_to_none=True)
        forward_backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        scaler.step(opt)
        scaler.update()
        if loss.disc_active(s):
            scaler_d.unscale_(opt_d)
            torch.nn.utils.clip_grad_norm_(loss.discriminator.parameters(), max_norm)
            scaler_d.step(opt_d)
            scaler_d.update()

    t_step = time_steps(step, device, args.warmup, args.reps)
    peak = peak_memory_mb(device)
    flops = None if args.no_flops else count_flops(forward_backward)
    gemm = measure_gemm_flops(device, dtype if (device.type == "cuda" and dtype is not None) else torch.float32)
    params = sum(p.numel() for p in model.parameters())
    result = {
        "config": args.config, "device": str(device), "precision": args.precision, "batch": args.batch,
        "at_step": s, "aux_terms": loss.aux_active(s), "discriminator": loss.disc_active(s), "distill": distill,
        "params_M": params / 1e6, "step_s": t_step, "images_per_s": args.batch / t_step,
        "peak_memory_MiB": peak, "gemm_TFLOPs_measured": gemm / 1e12,
    }
    print(f"tokenizer training step: {args.config} ({params / 1e6:.1f}M params) on {device} "
          f"[{torch.get_num_threads()} threads, {args.precision}], batch {args.batch}, step {s} "
          f"(aux terms {'on' if result['aux_terms'] else 'off'}, "
          f"discriminator {'on' if result['discriminator'] else 'off'}, "
          f"semantic loss {'on' if distill else 'off'})")
    print(f"  device GEMM throughput (measured):  {gemm / 1e12:.3f} TFLOP/s")
    line = f"  step: {t_step * 1e3:8.1f} ms   {args.batch / t_step:8.2f} images/s"
    if flops is not None:
        achieved = flops / t_step
        result.update(GFLOP_per_image=flops / args.batch / 1e9, images_per_s_floor=gemm / (flops / args.batch),
                      fraction_of_gemm_peak=achieved / gemm)
        line += (f"   {flops / args.batch / 1e9:7.1f} GFLOP/image (fwd+bwd)   {achieved / 1e12:.3f} TFLOP/s = "
                 f"{100 * achieved / gemm:.0f}% of GEMM peak (ceiling {gemm / (flops / args.batch):.2f} images/s)")
    print(line)
    print(f"  peak memory: {peak:.0f} MiB ({'CUDA allocated' if device.type == 'cuda' else 'process RSS'})")
    return result


if __name__ == "__main__":
    main()
