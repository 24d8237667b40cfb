"""Training data of the tokenizer trainer: seeded per-sample augmentation and a sampler that can resume mid-epoch.

Every crop and flip is a function of ``(seed, epoch, rank, position)``, so a resumed run sees exactly the images and
augmentations the uninterrupted run would have seen, without loading the samples it skips.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch
from PIL import UnidentifiedImageError

from utils.data import ImageFolderDataset, train_transform


class AugmentedImageFolder(torch.utils.data.Dataset):
    """Training images: ``key = (index, seed)`` -> (x in [-1, 1], index used, [unreadable files skipped]).

    The crop and flip draw from ``random.Random(seed)``, so the augmentation of a sample depends only on the key.
    An unreadable image is reported and replaced by the next readable one (the batch keeps its size, so every rank
    runs the same collectives).
    """

    def __init__(self, root: str | os.PathLike, image_size: int, hflip: bool = True, max_skips: int = 32):
        self.base = ImageFolderDataset(root, image_size)
        self.image_size, self.hflip, self.max_skips = image_size, hflip, max_skips

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (int(key), int(key))
        bad: list[str] = []
        for attempt in range(self.max_skips):
            i = (index + attempt) % len(self.base)
            try:
                img = self.base.load_rgb(i)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
                bad.append(f"{self.base.items[i][0]} ({type(exc).__name__}: {exc})")
                continue
            return train_transform(img, self.image_size, random.Random(seed), self.hflip), i, bad
        raise RuntimeError(f"{self.max_skips} consecutive unreadable images from index {index}: {bad}")


def collate_train(batch):
    x = torch.stack([b[0] for b in batch])
    idx = torch.tensor([b[1] for b in batch], dtype=torch.long)
    return x, idx, [s for b in batch for s in b[2]]


def sample_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank, position]).generate_state(1)[0])


class ResumableDistributedSampler(torch.utils.data.DistributedSampler):
    """``DistributedSampler`` (same permutation and padding as the original) that yields ``(index, seed)`` keys
    and can start at a position inside the epoch without loading the skipped samples."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int = 0, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def __iter__(self):
        indices = list(super().__iter__())
        for pos in range(self.start, len(indices)):
            yield indices[pos], sample_seed(self.seed, self.epoch, self.rank, pos)

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


def micro_batches(loader, sampler, steps_per_epoch: int, accum: int, micro_bs: int, start_step: int):
    """Yield ``(epoch, batch)`` for iterations start_step, start_step + 1, ... (``accum`` micro-batches each)."""
    epoch, skip = divmod(start_step, steps_per_epoch)
    while True:
        sampler.set_epoch(epoch)
        sampler.set_start(skip * accum * micro_bs)
        it = iter(loader)
        for _ in range((steps_per_epoch - skip) * accum):
            yield epoch, next(it)
        del it
        epoch, skip = epoch + 1, 0
