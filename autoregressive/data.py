"""Pre-extracted codes for the class-conditional GPT, keyed by ``(index, epoch)``.

Every random choice of a sample (ten-crop view, the ``ten_crop_105`` alternative folder) is drawn from a generator
seeded by ``(seed, epoch, index)``; the order of the samples is the trainer base's step-indexed one
(:mod:`utils.train_data`), which also provides the images for on-the-fly tokenisation.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import torch

from autoregressive.packed_codes import PackedCodes, is_packed, packed_dir
from utils.data import CodeDataset
from utils.train_data import mix_seed

__all__ = ["TrainCodeDataset", "alternative_code_dirs", "open_train_codes"]

log = logging.getLogger(__name__)


def alternative_code_dirs(codes_dir: Path, labels_dir: Path) -> Optional[tuple[Path, Path]]:
    """The original's second code set: the same path with ``ten_crop/`` replaced by ``ten_crop_105/``, if it exists."""
    alt = [Path(str(d).replace("ten_crop/", "ten_crop_105/")) for d in (codes_dir, labels_dir)]
    if str(alt[0]) == str(codes_dir) or not (alt[0].is_dir() and alt[1].is_dir()):
        return None
    return alt[0], alt[1]


def _alternative_packed(folder: Path) -> Optional[Path]:
    alt = Path(str(folder).replace("ten_crop/", "ten_crop_105/"))
    return alt if str(alt) != str(folder) and is_packed(alt) else None


class TrainCodeDataset(torch.utils.data.Dataset):
    """Pre-extracted codes: ``(index, epoch)`` -> ``(codes [T] int64, label, index)``.

    One of the stored views is picked at random per access (the original's ten-crop augmentation); if the
    ``ten_crop_105`` sibling folder exists, each access reads from it with probability 0.5, as the original.
    ``codes_dir`` may be a packed folder (``labels_dir=None``); the samples are then the same as from the per-image
    files of the same extraction.
    """

    def __init__(self, codes_dir: str | os.PathLike, labels_dir: str | os.PathLike | None, seed: int = 0,
                 use_alternative: bool = True):
        packed = labels_dir is None
        self.base = PackedCodes(codes_dir) if packed else CodeDataset(codes_dir, labels_dir)
        self.seed = seed
        self.alt = None
        if not use_alternative:
            return
        if packed:
            alt_dir = _alternative_packed(Path(codes_dir))
            other = PackedCodes(alt_dir) if alt_dir is not None else None
        else:
            alt = alternative_code_dirs(Path(codes_dir), Path(labels_dir))
            alt_dir, other = (alt[0], CodeDataset(*alt)) if alt is not None else (None, None)
        if other is not None:
            if list(other.ids) == list(self.base.ids):
                self.alt = other
            else:
                log.warning("ignoring %s: its images differ from %s", alt_dir, codes_dir)

    @property
    def packed(self) -> bool:
        return isinstance(self.base, PackedCodes)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (int(key), 0)
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index))
        src = self.alt if (self.alt is not None and torch.rand((), generator=g).item() < 0.5) else self.base
        with torch.random.fork_rng(devices=[]):  # CodeDataset draws its view from the global torch RNG
            torch.manual_seed(int(torch.randint(2 ** 62, (), generator=g)))
            codes, label = src[index]
        return codes, int(label), index


def open_train_codes(code_path: str | os.PathLike, dataset: str, image_size: int, seed: int = 0) -> TrainCodeDataset:
    """The training codes under ``code_path``: the packed folder ``<dataset><size>_packed`` if it exists (auto-
    detected), else the original's per-image ``<dataset><size>_codes`` / ``_labels`` files."""
    from autoregressive.extract_codes import code_dirs

    folder = packed_dir(code_path, dataset, image_size)
    if is_packed(folder):
        return TrainCodeDataset(folder, None, seed=seed)
    return TrainCodeDataset(*code_dirs(code_path, dataset, image_size), seed=seed)
