"""PNG helpers: image grids people can look at, optionally with a caption per cell."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def make_grid(images: np.ndarray, ncol: int = 8, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 NHWC images -> one uint8 HWC grid, row-major, ``pad`` pixels between cells."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"make_grid expects uint8 NHWC images, got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    ncol = max(1, min(ncol, n))
    nrow = (n + ncol - 1) // ncol
    grid = np.full((nrow * h + (nrow + 1) * pad, ncol * w + (ncol + 1) * pad, c), pad_value, np.uint8)
    for k, img in enumerate(images):
        r, col = divmod(k, ncol)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y: y + h, x: x + w] = img
    return grid


def save_grid(images: np.ndarray, path: str | os.PathLike, ncol: int = 8,
              captions: Sequence[str] | None = None, title: str | None = None, min_cell: int = 96) -> Path:
    """Write a PNG grid; ``captions`` label each row's first cell, ``title`` goes above the grid.

    Cells smaller than ``min_cell`` pixels are enlarged by an integer factor (nearest neighbour), so 32x32 samples
    are visible and captions fit; larger images are written at their size.
    """
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[0] and max(images.shape[1:3]) < min_cell:
        factor = -(-min_cell // max(images.shape[1:3]))
        images = images.repeat(factor, axis=1).repeat(factor, axis=2)
    grid = Image.fromarray(make_grid(images, ncol))
    if captions or title:
        font = ImageFont.load_default()
        band = 14 if title else 0
        canvas = Image.new("RGB", (grid.width, grid.height + band), (255, 255, 255))
        canvas.paste(grid, (0, band))
        draw = ImageDraw.Draw(canvas)
        if title:
            draw.text((4, 1), title, fill=(0, 0, 0), font=font)
        h = images.shape[1]
        ncol = max(1, min(ncol, len(images)))
        for k, text in enumerate(captions or []):
            r, col = divmod(k, ncol)
            x, y = 2 + col * (images.shape[2] + 2) + 3, band + 2 + r * (h + 2) + 3
            draw.rectangle([x - 2, y - 1, x + 6 * len(text) + 2, y + 11], fill=(0, 0, 0))
            draw.text((x, y), text, fill=(255, 255, 255), font=font)
        grid = canvas
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
