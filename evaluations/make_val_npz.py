"""Build the rFID reference batch from ImageNet val: ADM centre crop to 256, PNG copies, ``val_imagenet.npz``.

The original (``tokenizer/validation/val_ddp.py``, run by ``scripts/val.sh`` on 8 GPUs) writes the 256-px
centre-cropped validation images as PNG (the folder ``reconstruction.sh`` then reads as its dataset) and stacks them
into an ADM-style npz (``arr_0``: uint8 [N, 256, 256, 3]) that serves as the rFID reference. Here one process does it
with DataLoader workers (no GPU is involved in cropping).

    python -m evaluations.make_val_npz --data-path $IMGNET_ROOT/ILSVRC2012_img_val \\
        --png-dir $VAL_PATH --npz val_imagenet.npz

Order: torchvision ImageFolder order (sorted class folders, sorted files), which is also the order in which the PNG
folder is read back. PNGs keep the class sub-folder and the source file's stem. ``--data-path`` may also be tar
shards, parquet or ``hf://`` (:mod:`utils.shards`): shard order, PNGs named by class and record key.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils.data import ImageFolderDataset, center_crop_arr


class _CropDataset(torch.utils.data.Dataset):
    """uint8 centre crops, decoded as every other job decodes (``ImageFolderDataset.load_rgb``: files or shards)."""

    def __init__(self, images: ImageFolderDataset, count: int, image_size: int):
        self.images, self.count, self.image_size = images, count, image_size

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        arr = np.asarray(center_crop_arr(self.images.load_rgb(i), self.image_size), dtype=np.uint8)
        return torch.from_numpy(arr.copy()), i


def _png_name(images: ImageFolderDataset, i: int) -> Path:
    """Class sub-folder and stem of the source file; for a shard record, the class and the record's key."""
    name, label = images.items[i]
    if images.shards is not None:
        key = str(name).rpartition(":")[2].replace("/", "_")
        return Path(images.classes[label] if images.classes else "") / f"{key}.png"
    return Path(name).relative_to(images.root).with_suffix(".png")


def build(data_path, npz_path=None, png_dir=None, image_size: int = 256, max_images: int | None = None,
          workers: int = 4, batch_size: int = 64) -> np.ndarray:
    images = ImageFolderDataset(data_path, image_size)
    count = len(images) if max_images is None else min(max_images, len(images))
    loader = torch.utils.data.DataLoader(_CropDataset(images, count, image_size), batch_size=batch_size,
                                         shuffle=False, num_workers=workers)
    out = np.empty((count, image_size, image_size, 3), np.uint8)
    for batch, idx in loader:
        arrays = batch.numpy()
        for a, i in zip(arrays, idx.tolist(), strict=True):
            out[i] = a
            if png_dir is not None:
                dest = Path(png_dir) / _png_name(images, i)
                dest.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(a).save(dest)
    if npz_path is not None:
        Path(npz_path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(npz_path, arr_0=out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluations.make_val_npz", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-path", required=True, help="ImageNet val folder (class sub-folders, or flat), or tar "
                   "shards / parquet / hf://NAME:validation (utils.shards)")
    p.add_argument("--npz", default=None,
                   help="output npz (arr_0 uint8 NHWC); default SAMPLE_DIR/val_<dataset>.npz with --sample-dir, "
                        "else val_imagenet.npz")
    p.add_argument("--png-dir", default=None,
                   help="also write the cropped images here as PNG (default SAMPLE_DIR/val_<dataset> with "
                        "--sample-dir)")
    p.add_argument("--sample-dir", default=None,
                   help="the original's layout: PNGs in SAMPLE_DIR/val_<dataset>/ and SAMPLE_DIR/val_<dataset>.npz")
    p.add_argument("--dataset", default="imagenet", help="name used in the --sample-dir layout (val_<dataset>)")
    p.add_argument("--image-size", type=int, default=256,
                   help="side in pixels of the ADM centre crop (the npz holds N x size x size x 3)")
    p.add_argument("--max-images", type=int, default=None,
                   help="only the first N images in ImageFolder order (None: all)")
    p.add_argument("--workers", "--num-workers", dest="workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader worker processes that read and crop the images (4, capped at the CPU count; "
                        "0 crops in the main process)")
    p.add_argument("--per-proc-batch-size", type=int, default=64, help="images per DataLoader batch")
    p.add_argument("--global-seed", type=int, default=0, help="accepted for the original's scripts (cropping is "
                   "deterministic)")
    args = p.parse_args(argv)
    npz, png_dir = args.npz, args.png_dir
    if args.sample_dir is not None:
        folder = Path(args.sample_dir) / f"val_{args.dataset}"
        npz = npz or f"{folder}.npz"
        png_dir = png_dir or str(folder)
    npz = npz or "val_imagenet.npz"
    arr = build(args.data_path, npz, png_dir, args.image_size, args.max_images, args.workers,
                batch_size=args.per_proc_batch_size)
    print(f"wrote {npz}: {arr.shape[0]} images of {args.image_size}x{args.image_size}"
          + (f"; PNGs in {png_dir}" if png_dir else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "make_val_npz")
