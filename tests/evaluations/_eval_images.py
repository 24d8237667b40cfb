"""Small sets of real photographs from scikit-image's bundled data (no downloads) for the evaluation tests."""
from __future__ import annotations

import numpy as np
from PIL import Image

COLOUR = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
GREY = ("camera", "coins", "moon", "brick", "grass", "gravel", "clock", "cell")


def source_photos() -> list[np.ndarray]:
    import skimage.data as data
    photos = [getattr(data, name)() for name in COLOUR]
    left, right = data.stereo_motorcycle()[:2]
    photos += [left, right]
    photos += [np.repeat(getattr(data, name)()[..., None], 3, axis=2) for name in GREY]
    return [np.ascontiguousarray(p[..., :3]).astype(np.uint8) for p in photos]


def photo_crops(n: int = 40, size: int = 128, seed: int = 0) -> np.ndarray:
    """``n`` random square crops (30-90 % of the shorter side) of the photos, resized to ``size``; uint8 NHWC."""
    rng = np.random.default_rng(seed)
    photos = source_photos()
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 0.9))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(p[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC)
        out[i] = np.asarray(crop)
    return out


def add_noise(images: np.ndarray, std: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = images.astype(np.float32) + rng.normal(0, std, images.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
