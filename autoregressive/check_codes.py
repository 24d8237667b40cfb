"""Decode a sample of extracted codes back to images (a PNG grid), to check an extraction by eye.

    python -m autoregressive.check_codes --code-path CODES --model-config CFG --vq-ckpt CKPT --out check.png
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from autoregressive.extract_codes import code_dirs
from tokenizer import load_tokenizer
from utils.data import to_uint8
from utils.images import save_grid


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--code-path", required=True, help="folder given to extract_codes as --code-path")
    p.add_argument("--dataset", default="imagenet", help="dataset name used in the folder names")
    p.add_argument("--image-size", type=int, default=256, help="image size used in the folder names")
    p.add_argument("--model-config", "--tok-config", dest="model_config", required=True, help="tokenizer YAML")
    p.add_argument("--vq-ckpt", required=True, help="tokenizer weights")
    p.add_argument("--num", type=int, default=8, help="number of stored images to decode (all their views)")
    p.add_argument("--out", default="check_codes.png", help="output PNG grid (one row per image)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    return p.parse_args(argv)


@torch.no_grad()
def main(argv=None) -> np.ndarray:
    args = parse_args(argv)
    model = load_tokenizer(args.model_config, args.vq_ckpt, device=args.device)
    codes_dir, labels_dir = code_dirs(args.code_path, args.dataset, args.image_size)
    files = sorted(codes_dir.glob("*.npy"), key=lambda p: int(p.stem))[: args.num]
    if not files:
        raise FileNotFoundError(f"no code files in {codes_dir}")
    rows, captions = [], []
    for f in files:
        codes = torch.from_numpy(np.load(f)).to(args.device)
        images = model.decode_code(codes, model.latent_shape(codes.shape[0]))
        rows.append(to_uint8(images).cpu().numpy())
        label = int(np.load(labels_dir / f.name)) if (labels_dir / f.name).exists() else -1
        captions += [f"#{f.stem} y={label}"] + [""] * (codes.shape[0] - 1)
    grid = np.concatenate(rows)
    save_grid(grid, args.out, ncol=rows[0].shape[0], captions=captions)
    print(f"[check_codes] decoded {len(files)} images x {rows[0].shape[0]} views -> {args.out}")
    return grid


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "check_codes")
