"""utils/images.py: grids people can look at."""
from __future__ import annotations

import numpy as np
from PIL import Image

from utils.images import make_grid, save_grid

from testlib import REPO  # noqa: F401  (puts the repo root on sys.path)


def test_make_grid_places_cells_row_major():
    imgs = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (10, 20, 30)])
    grid = make_grid(imgs, ncol=2, pad=1, pad_value=255)
    assert grid.shape == (2 * 4 + 3, 2 * 4 + 3, 3)
    assert grid[1, 1, 0] == 10 and grid[1, 6, 0] == 20 and grid[6, 1, 0] == 30 and grid[6, 6, 0] == 255


def test_save_grid_enlarges_small_images_only(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    path = save_grid(small, tmp_path / "small.png", ncol=2)
    out = np.asarray(Image.open(path))
    assert out.shape == (2 * 96 + 3 * 2, 2 * 96 + 3 * 2, 3)  # 3x nearest-neighbour cells
    assert np.array_equal(out[2:98:3, 2:98:3], small[0])
    big = rng.integers(0, 255, (2, 128, 128, 3), dtype=np.uint8)
    out = np.asarray(Image.open(save_grid(big, tmp_path / "big.png", ncol=2)))
    assert out.shape == (128 + 4, 2 * 128 + 6, 3)
    assert np.array_equal(out[2:130, 2:130], big[0])


def test_save_grid_with_captions_and_title(tmp_path):
    imgs = np.zeros((4, 32, 32, 3), np.uint8)
    out = np.asarray(Image.open(save_grid(imgs, tmp_path / "cap.png", ncol=2, captions=["a", "b"], title="t")))
    assert out.shape[0] == 2 * 96 + 6 + 14  # title band
    assert (out[:14] < 128).any()  # the title text is drawn
