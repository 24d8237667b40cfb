"""Training data for the class-conditional GPT: codes or images keyed by ``(index, epoch)``, and a sampler whose
position is a pure function of the optimiser step.

Every random choice of a sample (ten-crop view, the ``ten_crop_105`` alternative folder, random-resized crop and
flip) is drawn from a generator seeded by ``(seed, epoch, index)``. The order of the data is a fixed permutation per
epoch (the one ``DistributedSampler(shuffle=True, seed=seed)`` draws), cut into consecutive global batches; rank ``r``
of ``W`` takes the ``r``-th slice of each global batch. So the samples of step ``s`` depend only on ``s``, not on the
number of DataLoader workers, and a resumed run picks up at exactly the next batch without reading the skipped ones.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from PIL import UnidentifiedImageError

from utils.data import CodeDataset, ImageFolderDataset, train_transform

__all__ = ["mix_seed", "StepBatchSampler", "TrainCodeDataset", "TrainImageDataset", "alternative_code_dirs"]

log = logging.getLogger(__name__)


def mix_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (different key tuples give unrelated streams)."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFFFFFF for k in keys]).generate_state(
        1, dtype=np.uint64)[0] >> 1)


class StepBatchSampler(torch.utils.data.Sampler):
    """Batch sampler yielding, for steps ``start_step .. end_step - 1``, this rank's ``[(index, epoch), ...]``.

    ``steps_per_epoch = len(dataset) // global_batch`` (as the original counts epochs); the last
    ``len(dataset) % global_batch`` samples of each epoch's permutation are not used in that epoch.
    """

    def __init__(self, dataset_len: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 start_step: int = 0, end_step: Optional[int] = None, shuffle: bool = True):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by the world size {world_size}")
        if dataset_len < global_batch:
            raise ValueError(f"the dataset has {dataset_len} samples, fewer than one global batch ({global_batch})")
        self.n, self.global_batch, self.rank, self.world = dataset_len, global_batch, rank, world_size
        self.local_batch = global_batch // world_size
        self.seed, self.shuffle = seed, shuffle
        self.steps_per_epoch = dataset_len // global_batch
        self.start_step, self.end_step = start_step, end_step
        self._perm_epoch, self._perm = None, None

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + epoch)  # DistributedSampler's epoch permutation
                self._perm = torch.randperm(self.n, generator=g)
            else:
                self._perm = torch.arange(self.n)
            self._perm_epoch = epoch
        return self._perm

    def batch_for_step(self, step: int) -> list[tuple[int, int]]:
        epoch, k = divmod(step, self.steps_per_epoch)
        start = k * self.global_batch + self.rank * self.local_batch
        return [(int(i), epoch) for i in self.permutation(epoch)[start: start + self.local_batch]]

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while self.end_step is None or step < self.end_step:
            yield self.batch_for_step(step)
            step += 1

    def __len__(self) -> int:
        if self.end_step is None:
            raise TypeError("an open-ended StepBatchSampler has no length")
        return max(self.end_step - self.start_step, 0)


def alternative_code_dirs(codes_dir: Path, labels_dir: Path) -> Optional[tuple[Path, Path]]:
    """The original's second code set: the same path with ``ten_crop/`` replaced by ``ten_crop_105/``, if it exists."""
    alt = [Path(str(d).replace("ten_crop/", "ten_crop_105/")) for d in (codes_dir, labels_dir)]
    if str(alt[0]) == str(codes_dir) or not (alt[0].is_dir() and alt[1].is_dir()):
        return None
    return alt[0], alt[1]


class TrainCodeDataset(torch.utils.data.Dataset):
    """Pre-extracted codes: ``(index, epoch)`` -> ``(codes [T] int64, label, index)``.

    One of the stored views is picked at random per access (the original's ten-crop augmentation); if the
    ``ten_crop_105`` sibling folder exists, each access reads from it with probability 0.5, as the original.
    """

    def __init__(self, codes_dir: str | os.PathLike, labels_dir: str | os.PathLike, seed: int = 0,
                 use_alternative: bool = True):
        self.base = CodeDataset(codes_dir, labels_dir)
        self.seed = seed
        self.alt = None
        alt = alternative_code_dirs(Path(codes_dir), Path(labels_dir)) if use_alternative else None
        if alt is not None:
            other = CodeDataset(*alt)
            if other.ids == self.base.ids:
                self.alt = other
            else:
                log.warning("ignoring %s: its files differ from %s", alt[0], codes_dir)

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


class TrainImageDataset(torch.utils.data.Dataset):
    """Images for on-the-fly tokenisation: ``(index, epoch)`` -> ``(x [3, S, S] in [-1, 1], label, index)``.

    Augmentation as the original: ADM ``random_crop_arr`` (short side uniform in [S, ceil(S / 0.8)]) and a
    horizontal flip with p = 0.5, drawn from ``random.Random(seed(seed, epoch, index))``. An unreadable image is
    reported and replaced by the next readable one (so every rank keeps its batch size); the index returned is
    the one actually used.
    """

    def __init__(self, root: str | os.PathLike, image_size: int, seed: int = 0, hflip: bool = True,
                 max_skips: int = 32):
        self.base = ImageFolderDataset(root, image_size)
        self.image_size, self.seed, self.hflip, self.max_skips = image_size, seed, hflip, max_skips

    @property
    def classes(self) -> list[str]:
        return self.base.classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (int(key), 0)
        rng = random.Random(mix_seed(self.seed, epoch, index))
        for attempt in range(self.max_skips):
            i = (index + attempt) % len(self.base)
            try:
                img = self.base.load_rgb(i)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
                log.warning("skipping unreadable image %s: %s: %s", self.base.items[i][0], type(exc).__name__, exc)
                continue
            return train_transform(img, self.image_size, rng, self.hflip), self.base.items[i][1], i
        raise RuntimeError(f"{self.max_skips} consecutive unreadable images from index {index} under "
                           f"{self.base.root}")
