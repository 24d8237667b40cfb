"""The Fashion-MNIST subset shipped in utils/fashion_mnist_data (for the offline quickstart and tests) as image folders.

``python -m utils.fashion_mnist OUT_DIR`` writes ``OUT_DIR/{train,val}/<class_id>_<name>/<i>.png`` (RGB PNGs, 28x28),
an ImageFolder layout every driver of this project reads, and ``OUT_DIR/class_names.txt`` (one name per line, in
label order, for ``autoregressive.sample_c2i --class-names``).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

SUBSET = Path(__file__).resolve().parent / "fashion_mnist_data" / "fashion_mnist_subset.npz"  # package data


def load_subset(path: str | os.PathLike = SUBSET) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def class_folder(label: int, names) -> str:
    """Folder name sorting in label order, so ImageFolder's class index equals the Fashion-MNIST label."""
    safe = str(names[label]).replace("/", "-").replace(" ", "_")
    return f"{label:02d}_{safe}"


def export_image_folders(out_dir: str | os.PathLike, path: str | os.PathLike = SUBSET,
                         limit_per_class: int | None = None, splits: tuple[str, ...] = ("train", "val")
                         ) -> dict[str, int]:
    """Write ImageFolder trees of RGB PNGs for ``splits``; returns the image count per split. Idempotent.

    ``limit_per_class`` keeps the first N images of every class (a class-balanced subset).
    """
    data = load_subset(path)
    names = data["class_names"]
    unknown = sorted(set(splits) - {"train", "val"})
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; the subset has 'train' and 'val'")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "class_names.txt").write_text("".join(f"{n}\n" for n in names))
    counts = {}
    for split in splits:
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        seen: dict[int, int] = {}
        n = 0
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            label = int(label)
            if limit_per_class is not None and seen.get(label, 0) >= limit_per_class:
                continue
            seen[label] = seen.get(label, 0) + 1
            folder = Path(out_dir) / split / class_folder(label, names)
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{i:05d}.png"
            if not target.exists():
                Image.fromarray(img).convert("RGB").save(target)
            n += 1
        counts[split] = n
    return counts


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="output folder (gets train/ and val/)")
    p.add_argument("--limit-per-class", type=int, default=None, help="at most N images per class and split")
    p.add_argument("--splits", nargs="+", choices=["train", "val"], default=["train", "val"], help="splits to write")
    args = p.parse_args()
    print(export_image_folders(args.out_dir, limit_per_class=args.limit_per_class, splits=tuple(args.splits)))
