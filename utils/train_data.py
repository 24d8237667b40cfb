"""Training data whose every choice is a function of the optimiser step: the one resume strategy of both trainers.

- :class:`StepBatchSampler` cuts one fixed permutation per epoch (the one ``DistributedSampler(shuffle=True,
  seed=seed)`` draws) into consecutive global batches; rank ``r`` of ``W`` takes the ``r``-th slice of each, split
  into the step's micro-batches. The global batch of step ``s`` therefore depends only on ``s``: not on the number
  of processes, nodes or DataLoader workers, and a resumed run starts at the next batch without reading the skipped
  ones.
- Datasets are keyed by ``(index, epoch)`` and draw every augmentation from a generator seeded by
  ``mix_seed(seed, epoch, index)``.
- The model-side random streams (dropout, discriminator augmentation, label dropout) are reseeded at every step from
  ``mix_seed(seed, rank, step)`` by the trainer base.

So a checkpoint needs no sampler state and no RNG state: resuming at step ``s`` reproduces the uninterrupted run.
"""
from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import UnidentifiedImageError

from utils.data import ImageFolderDataset, train_transform

__all__ = ["mix_seed", "StepBatchSampler", "AugmentedImageFolder", "collate_samples", "UNREADABLE_ERRORS"]

log = logging.getLogger(__name__)
UNREADABLE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


def mix_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (different key tuples give unrelated streams)."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFFFFFF for k in keys]).generate_state(
        1, dtype=np.uint64)[0] >> 1)


class StepBatchSampler(torch.utils.data.Sampler):
    """Batch sampler yielding this rank's micro-batches ``[(index, epoch), ...]`` for steps ``start_step ..
    end_step - 1``, ``micro_batches`` per step.

    ``steps_per_epoch = len(dataset) // global_batch``; the last ``len(dataset) % global_batch`` samples of each
    epoch's permutation are not used in that epoch.
    """

    def __init__(self, dataset_len: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 start_step: int = 0, end_step: int | None = None, shuffle: bool = True, micro_batches: int = 1):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by the world size {world_size}")
        if (global_batch // world_size) % micro_batches:
            raise ValueError(f"the per-rank batch {global_batch // world_size} is not divisible into "
                             f"{micro_batches} micro-batches")
        if dataset_len < global_batch:
            raise ValueError(f"the dataset has {dataset_len} samples, fewer than one global batch ({global_batch})")
        self.n, self.global_batch, self.rank, self.world = dataset_len, global_batch, rank, world_size
        self.local_batch = global_batch // world_size
        self.seed, self.shuffle, self.micro_batches = seed, shuffle, micro_batches
        self.steps_per_epoch = dataset_len // global_batch
        self.start_step, self.end_step = start_step, end_step
        self._perm_epoch: int | None = None
        self._perm: torch.Tensor | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed + epoch)  # DistributedSampler's permutation
                self._perm = torch.randperm(self.n, generator=generator)
            else:
                self._perm = torch.arange(self.n)
            self._perm_epoch = epoch
        return self._perm

    def batch_for_step(self, step: int) -> list[tuple[int, int]]:
        """This rank's whole batch of ``step`` (all its micro-batches, in order)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        start = k * self.global_batch + self.rank * self.local_batch
        return [(int(i), epoch) for i in self.permutation(epoch)[start: start + self.local_batch]]

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step, size = self.start_step, self.local_batch // self.micro_batches
        while self.end_step is None or step < self.end_step:
            batch = self.batch_for_step(step)
            for micro in range(self.micro_batches):
                yield batch[micro * size: (micro + 1) * size]
            step += 1

    def __len__(self) -> int:
        if self.end_step is None:
            raise TypeError("an open-ended StepBatchSampler has no length")
        return max(self.end_step - self.start_step, 0) * self.micro_batches


def data_order_changes(stored: dict, dataset_len: int, global_batch_size: int, seed: int) -> list[str]:
    """The settings fixing the data order (:class:`StepBatchSampler`'s permutations and batch cuts, the augmentation
    seeds) that differ from those a checkpoint's ``trainer_state`` recorded, each as ``"key old -> new"``; a key the
    checkpoint did not record counts as unchanged."""
    now = {"dataset_len": dataset_len, "global_batch_size": global_batch_size, "seed": seed}
    return [f"{key} {stored[key]} -> {value}" for key, value in now.items() if key in stored and stored[key] != value]


class AugmentedImageFolder(torch.utils.data.Dataset):
    """Training images: ``(index, epoch)`` -> ``(x [3, S, S] in [-1, 1], label, index used, [skipped files])``.

    Augmentation as the original (both trainers): ADM ``random_crop_arr`` (short side uniform in
    [S, ceil(S / 0.8)]) and a horizontal flip with p = 0.5, drawn from ``random.Random(mix_seed(seed, epoch,
    index))``. An unreadable image is reported and replaced by the next readable one, so every rank keeps its batch
    size and runs the same collectives.
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
        skipped: list[str] = []
        for attempt in range(self.max_skips):
            i = (index + attempt) % len(self.base)
            try:
                img = self.base.load_rgb(i)
            except UNREADABLE_ERRORS as exc:
                skipped.append(f"{self.base.items[i][0]} ({type(exc).__name__}: {exc})")
                continue
            return train_transform(img, self.image_size, rng, self.hflip), self.base.items[i][1], i, skipped
        raise RuntimeError(f"{self.max_skips} consecutive unreadable images from index {index} under "
                           f"{self.base.root}: {skipped}")


def collate_samples(samples: Sequence[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """``(x, label, index[, skipped])`` samples -> ``(x [B, ...], labels [B], indices [B], skipped files)``."""
    x = torch.stack([s[0] for s in samples])
    labels = torch.tensor([s[1] for s in samples], dtype=torch.long)
    indices = torch.tensor([s[2] for s in samples], dtype=torch.long)
    return x, labels, indices, [name for s in samples if len(s) > 3 for name in s[3]]
