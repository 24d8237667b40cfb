"""Reconstruct a folder of images with a tokenizer and score it (PSNR, SSIM, codebook usage, LPIPS, rFID).

Runs alone (``python -m tokenizer.reconstruct``) or under torchrun; each rank takes every world_size-th image.
Writes, under ``<sample-dir>/<run-name>/``: ``images/{index:06d}.png`` reconstructions, ``<run-name>.npz``
(``arr_0`` uint8 NHWC, dataset order), ``compare/`` side-by-side PNGs and ``grid.png`` (``--qualitative``),
``metrics.json`` and the resolved ``config.yaml``.

A tokenizer checkpoint that stores its config (a training checkpoint's ``config``, a ``save_pretrained`` folder) needs
no ``--model-config``; given, it must build the same model (else an error names the differing settings). A released
file resolves its YAML by name (``VQ_SS256_e100.pt``), as before. ``--image-size`` defaults to the tokenizer's.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from evaluations.recon import LPIPSMetric, psnr, rfid, ssim
from tokenizer import load_tokenizer, read_tokenizer_config, settle_tokenizer_config, tokenizer_info
from utils.checkpoint import resolve_checkpoint, sha256_file
from utils.compat import add_inert_flags
from utils.config import save_config
from utils.data import ImageFolderDataset, collate_skip_bad, to_uint8
from utils.distributed import all_gather_tensor, barrier, finish, init_distributed
from utils.images import save_grid
from utils.training import PRECISIONS, configure_tf32


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_inert_flags(p, "--quant-way")
    p.add_argument("--data-path", required=True,
                   help="image folder: ImageFolder layout (class sub-folders) or a flat folder of images")
    p.add_argument("--image-size", type=int, default=None,
                   help="centre-crop size (default: the tokenizer's; another size runs the tokenizer at that size, "
                        "its position tables resampled)")
    p.add_argument("--sample-dir", default="results/reconstructions", help="parent folder of the run's outputs")
    p.add_argument("--run-name", default=None, help="output sub-folder name (default: <config>-<checkpoint>)")
    p.add_argument("--vq-ckpt", required=True,
                   help="tokenizer weights: local file, released name (VQ_SS256_e100.pt) or hf://OWNER/REPO/FILE")
    p.add_argument("--model-config", "--tok-config", dest="model_config", default=None,
                   help="tokenizer YAML (e.g. configs/vq/VQ_SS256.yaml; default: the checkpoint's stored config, or "
                        "the released model's YAML)")
    p.add_argument("--qualitative", action="store_true", help="also write side-by-side PNGs and grid.png")
    p.add_argument("--qual-num", type=int, default=16,
                   help="images in grid.png with --qualitative (evenly spaced over the dataset)")
    p.add_argument("--lpips", action="store_true", help="also compute LPIPS (needs the VGG16 weights)")
    p.add_argument("--lpips-vgg-path", default=None, help="local torchvision vgg16 state dict for LPIPS (offline)")
    p.add_argument("--ref-npz", "--gt-npz-path", dest="ref_npz", default=None,
                   help="reference npz (e.g. val_imagenet.npz from scripts/val.sh): computes rFID and rsFID against "
                        "it (--gt-npz-path is the original's name)")
    p.add_argument("--image-size-eval", type=int, default=None,
                   help="resize reconstructions and originals (bicubic) to this size for the metrics and the saved "
                        "images, as the original (default: --image-size)")
    p.add_argument("--eval-python-path", default=None,
                   help="accepted for the original's scripts; the evaluation runs in this environment")
    p.add_argument("--global-seed", type=int, default=0, help="accepted for the original's scripts (deterministic)")
    p.add_argument("--fid-method", choices=("sqrtm", "eigh"), default="sqrtm",
                   help="rFID: trace of the covariance-product root by scipy sqrtm (as ADM) or by symmetric "
                        "eigendecompositions (eigh: ~3x faster on CPU, same value up to round-off)")
    p.add_argument("--clear-cache", action="store_true",
                   help="delete the per-image PNGs once the npz is written (keeps compare/ and grid.png)")
    p.add_argument("--per-proc-batch-size", type=int, default=32, help="images per batch and process")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers per process")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images of the folder")
    p.add_argument("--precision", choices=list(PRECISIONS), default="none", help="autocast dtype for the model")
    p.add_argument("--device", default="auto", help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-tf32", action="store_true",
                   help="keep TF32 off on CUDA (exact fp32); the original turns it on, and so does this default")
    p.add_argument("--tf32", action="store_true", help="accepted; TF32 is on by default (see --no-tf32)")
    p.add_argument("--config-overrides", nargs="*", default=[], help="dotted overrides for the config")
    return p.parse_args(argv)


def run_name(args: argparse.Namespace, ckpt_sha256: str) -> str:
    """Default: ``<config>-<checkpoint>-<sha256[:8]>-size-<size>``; the hash keeps two experiments' ``0000060.pt``
    apart."""
    size = f"-size-{args.image_size}" + (f"-size-{args.image_size_eval}" if args.image_size_eval not in
                                         (None, args.image_size) else "")
    return args.run_name or f"{config_name(args)}-{Path(str(args.vq_ckpt)).stem}-{ckpt_sha256[:8]}{size}"


def config_name(args: argparse.Namespace) -> str:
    """The config file's stem; for a config stored in the checkpoint, the experiment folder's name
    (``<exp>/checkpoints/0000300.pt`` -> ``<exp>``'s name)."""
    if not isinstance(args.model_config, dict):
        return Path(args.model_config).stem
    ckpt = Path(str(args.vq_ckpt))
    return ckpt.parent.parent.name if ckpt.parent.name == "checkpoints" and ckpt.parent.parent.name else "stored"


def config_label(args: argparse.Namespace) -> str:
    """What metrics.json records as the config: its file, or the checkpoint that stores it."""
    return f"stored in {args.vq_ckpt}" if isinstance(args.model_config, dict) else str(args.model_config)


def result_inputs(args: argparse.Namespace, ckpt_sha256: str) -> dict:
    """What decides a reconstruction result; a folder holding another result is never overwritten."""
    return {"checkpoint_sha256": ckpt_sha256, "config": config_label(args),
            "config_overrides": list(args.config_overrides), "data_path": str(args.data_path),
            "image_size": args.image_size, "image_size_eval": args.image_size_eval or args.image_size,
            "max_images": args.max_images, "precision": args.precision}


def check_result_folder(out_dir: Path, inputs: dict) -> None:
    """Refuse to write into a folder whose metrics.json records other inputs (naming the first difference)."""
    metrics = out_dir / "metrics.json"
    if not metrics.is_file():
        return
    try:
        old = json.loads(metrics.read_text()).get("inputs") or {}
    except ValueError:
        old = {}
    diff = [k for k, v in inputs.items() if k in old and old[k] != v]
    if diff:
        k = diff[0]
        raise ValueError(f"{out_dir} already holds the reconstruction of other inputs ({k}: {old[k]!r} there, "
                         f"{inputs[k]!r} now); choose another --run-name or --sample-dir")


@torch.no_grad()
def main(argv=None) -> dict:
    args = parse_args(argv)
    dist = init_distributed(args.device)
    args.device = str(dist.device)  # metrics.json records the device used, not "auto"
    configure_tf32(dist.device, not args.no_tf32)

    if dist.is_main:  # download once, then every rank reads the cached file
        ckpt_path = resolve_checkpoint(args.vq_ckpt)
    barrier()
    ckpt_path = resolve_checkpoint(args.vq_ckpt)
    args.model_config = settle_tokenizer_config(args.vq_ckpt, args.model_config, flag="--model-config")
    cfg = read_tokenizer_config(args.model_config, args.config_overrides)
    native = tokenizer_info(cfg)["image_size"]
    args.image_size = args.image_size or native
    ckpt_sha256 = sha256_file(ckpt_path)
    inputs = result_inputs(args, ckpt_sha256)
    # another --image-size than the tokenizer's: its position tables are resampled (tokenizer.resolution)
    model = load_tokenizer(cfg, ckpt_path, device=dist.device,
                           image_size=args.image_size if args.image_size != native else None)

    out_dir = Path(args.sample_dir) / run_name(args, ckpt_sha256)
    img_dir = out_dir / "images"
    check_result_folder(out_dir, inputs)
    # before anything is written: offline without the VGG weights this stops with a message, leaving no folder
    lpips_metric = LPIPSMetric(dist.device, vgg_weights_path=args.lpips_vgg_path) if args.lpips else None
    if dist.is_main:
        img_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "compare").mkdir(exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    barrier()

    dataset = ImageFolderDataset(args.data_path, args.image_size)
    indices = list(range(len(dataset)))[: args.max_images]
    subset = torch.utils.data.Subset(dataset, indices[dist.rank:: dist.world_size])
    loader = torch.utils.data.DataLoader(subset, batch_size=args.per_proc_batch_size, shuffle=False,
                                         num_workers=args.num_workers, collate_fn=collate_skip_bad)
    autocast_dtype = PRECISIONS[args.precision]
    eval_size = args.image_size_eval or args.image_size

    psnrs, ssims, codes, done, bad = [], [], [], [], []
    start = time.time()
    for x, _, idx, bad_idx in tqdm(loader, disable=not dist.is_main, desc="reconstruct"):
        bad.extend(int(i) for i in bad_idx)
        if x.numel() == 0:
            continue
        x = x.to(dist.device)
        with torch.autocast(dist.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            quant, _, info = model.encode(x)
            samples = model.decode_code(info[2], quant.shape).float()
        if lpips_metric is not None:  # at the model's resolution, before any --image-size-eval resize
            lpips_metric.update(x.float(), samples)
        if eval_size != args.image_size:
            samples = F.interpolate(samples, size=(eval_size, eval_size), mode="bicubic")
            x = F.interpolate(x.float(), size=(eval_size, eval_size), mode="bicubic")
        recon = to_uint8(samples).cpu()
        for img, i in zip(recon.numpy(), idx.tolist(), strict=True):
            Image.fromarray(img).save(img_dir / f"{i:06d}.png")
        gt = ((x + 1) / 2).permute(0, 2, 3, 1).float().cpu()
        restored = recon.float() / 255.0
        psnrs.append(torch.from_numpy(psnr(restored, gt)))
        ssims.append(torch.from_numpy(ssim(restored, gt)))
        codes.append(info[2].reshape(x.shape[0], -1).cpu())
        done.append(idx)
        if args.qualitative:
            orig_u8 = to_uint8(x).cpu().numpy()
            for o, r, i in zip(orig_u8, recon.numpy(), idx.tolist(), strict=True):
                Image.fromarray(np.concatenate([o, r], axis=1)).save(out_dir / "compare" / f"{i:06d}.png")

    def gather(parts: list[torch.Tensor], dtype=torch.float64, width: tuple = ()) -> torch.Tensor:
        local = torch.cat(parts) if parts else torch.empty((0, *width), dtype=dtype)
        return all_gather_tensor(local.to(dist.device)).cpu()

    all_psnr, all_ssim = gather(psnrs), gather(ssims)
    all_idx = gather(done, torch.long)
    all_bad = gather([torch.tensor(bad, dtype=torch.long)], torch.long)
    all_codes = gather(codes, torch.long, (model.num_tokens,))
    lpips_value = lpips_batch_mean = None
    if lpips_metric is not None:
        lp = gather([torch.tensor(lpips_metric.values, dtype=torch.float64)])
        lp_batches = gather([torch.tensor(lpips_metric.batch_means, dtype=torch.float64)])
        lpips_value = float(lp.mean()) if lp.numel() else None
        lpips_batch_mean = float(lp_batches.mean()) if lp_batches.numel() else None
    elapsed = time.time() - start
    barrier()

    metrics: dict = {}
    if dist.is_main:
        order = torch.argsort(all_idx)
        npz_path = out_dir / f"{run_name(args, ckpt_sha256)}.npz"
        arr = np.stack([np.asarray(Image.open(img_dir / f"{int(i):06d}.png")) for i in all_idx[order]]) \
            if all_idx.numel() else np.zeros((0, eval_size, eval_size, 3), np.uint8)
        np.savez(npz_path, arr_0=arr, indices=all_idx[order].numpy())
        if args.qualitative and len(arr):
            # evenly spaced over the dataset order, so a class-sorted folder shows every class, not the first one
            shown_idx = all_idx[order][np.unique(np.linspace(0, len(arr) - 1, min(args.qual_num, len(arr))).round()
                                                 .astype(np.int64))]
            pairs = [np.asarray(Image.open(out_dir / "compare" / f"{int(i):06d}.png")) for i in shown_idx]
            save_grid(np.stack(pairs), out_dir / "grid.png", ncol=min(4, len(pairs)))
        metrics = {
            "num_images": int(all_idx.numel()),
            "skipped_images": [str(dataset.items[int(i)][0]) for i in all_bad.tolist()],
            "psnr": float(all_psnr.mean()) if all_psnr.numel() else None,
            "ssim": float(all_ssim.mean()) if all_ssim.numel() else None,
            "ssim_note": "skimage SSIM with data_range=2.0 on [0,1] images, as the original reports it",
            "lpips": lpips_value,
            "lpips_batch_mean": lpips_batch_mean,
            "lpips_note": "lpips = mean over images; lpips_batch_mean = the original's mean of per-batch means (a "
                          "short last batch weighs more)",
            "codebook_usage": all_codes.unique().numel() / model.codebook_size if all_codes.numel() else 0.0,
            "rfid": None, "rsfid": None,
            "images_per_second": all_idx.numel() / max(elapsed, 1e-9),
            "checkpoint": str(args.vq_ckpt), "checkpoint_path": str(ckpt_path),
            "checkpoint_sha256": ckpt_sha256, "inputs": inputs,
            "config": config_label(args), "config_overrides": args.config_overrides,
            "data_path": str(args.data_path), "image_size": args.image_size, "image_size_eval": eval_size,
            "precision": args.precision,
            "device": str(dist.device), "world_size": dist.world_size, "npz": str(npz_path),
            "tf32": not args.no_tf32 and dist.device.type == "cuda",
        }
        if args.ref_npz:
            # reference activations are cached next to REF_NPZ (keyed by its sha256 and the weights'), as --cache-ref
            result = rfid(args.ref_npz, npz_path, return_all=True, compute_pr=False, device=dist.device,
                          cache_ref=True, fid_method=args.fid_method)
            metrics["rfid"], metrics["rsfid"] = float(result["fid"]), float(result["sfid"])
        if args.clear_cache:
            shutil.rmtree(img_dir)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        for path in metrics["skipped_images"]:
            print(f"[reconstruct] skipped unreadable image: {path}")
        shown = {k: metrics[k] for k in ("num_images", "psnr", "ssim", "lpips", "codebook_usage", "rfid", "rsfid")}
        print(f"[reconstruct] {json.dumps(shown)}\n[reconstruct] outputs in {out_dir}")
    finish()
    return metrics


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "reconstruct")
