"""The parity vectors' input photos: scikit-image samples, centre-cropped and resized as the vectors were made.

A module of its own (not in testlib) so that tests/data/parity/make_vectors.py can import it next to the original
code without pulling in the test helpers.
"""
from __future__ import annotations

import numpy as np
import torch


def photo_256(name: str) -> torch.Tensor:
    """``skimage.data.<name>()``, centre-cropped to a square and resized bicubic (PIL) to 256: uint8 [3, 256, 256]."""
    from PIL import Image
    from skimage import data

    array = getattr(data, name)()
    h, w = array.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = Image.fromarray(array[top:top + side, left:left + side]).resize((256, 256), Image.BICUBIC)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
