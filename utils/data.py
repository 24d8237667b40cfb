"""Image datasets and transforms shared by reconstruction, training and code extraction.

Images are read from an ImageFolder-style tree (class sub-folders) or a flat folder, or from tar shards / parquet /
``hf://`` datasets (:mod:`utils.shards`). Grayscale, palette and
RGBA images are converted to RGB; an unreadable file is reported by path and skipped instead of killing a
DataLoader worker.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # compared lower-case
log = logging.getLogger(__name__)


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM centre crop: halve with BOX while the short side >= 2x target, BICUBIC-resize the short side to
    ``image_size``, then crop the centre square."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top: top + image_size, left: left + image_size])


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels are composited on white (not left as black garbage)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit greyscale: scale the full range to 8 bits (PIL's convert would clip at 255, i.e. white)
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if img.mode == "I" and arr.max() <= 255:
            top = 255.0
        grey = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def to_model_range(img: Image.Image) -> torch.Tensor:
    """uint8 PIL RGB -> float tensor [3, H, W] in [-1, 1] (ToTensor + Normalize(0.5, 0.5))."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return arr / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model output in about [-1, 1] -> uint8 NHWC, rounding half up as the original (clamp(127.5x+128))."""
    return torch.clamp(127.5 * x + 128.0, 0, 255).permute(0, 2, 3, 1).to(torch.uint8)


def list_images(root: str | os.PathLike) -> tuple[list[tuple[Path, int]], list[str]]:
    """Sorted (path, class index) pairs and the class names.

    With class sub-folders the layout is torchvision's ImageFolder; a flat folder of images is one class.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    if subdirs:
        classes = [d.name for d in subdirs]
        items = [(p, i) for i, d in enumerate(subdirs) for p in sorted(d.rglob("*"))
                 if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]
    else:
        classes = [root.name]
        items = [(p, 0) for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]
    if not items:
        raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) "
                                f"found under {str(root)!r}")
    return items, classes


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images as ``(tensor, label, index)``; an unreadable image yields ``None`` in place of the tensor.

    Use :func:`collate_skip_bad` as the DataLoader's ``collate_fn``: it drops such samples and reports them.
    ``transform`` maps an RGB PIL image to a tensor (default: ADM centre crop to ``image_size``, [-1, 1]).
    """

    def __init__(self, root: str | os.PathLike, image_size: int = 256,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None):
        from utils.shards import ShardSource, is_sharded

        # tar shards / parquet / hf:// (utils.shards): the same items, order and decoding, read from records
        self.shards = ShardSource(root) if is_sharded(root) else None
        if self.shards is not None:
            self.root = self.shards.source
            self.items, self.classes = self.shards.items, self.shards.classes
        else:
            self.root = Path(root)
            self.items, self.classes = list_images(root)
        self.image_size = image_size
        self.transform = transform or (lambda img: to_model_range(center_crop_arr(img, image_size)))

    def __len__(self) -> int:
        return len(self.items)

    def load_rgb(self, index: int) -> Image.Image:
        if self.shards is not None:
            return self.shards.load_rgb(index)
        path = self.items[index][0]
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)

    def to_tensor(self, img: Image.Image, index: int) -> torch.Tensor:
        """The sample tensor of image ``index`` (subclasses key their augmentation on the index)."""
        return self.transform(img)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        try:
            x = self.to_tensor(self.load_rgb(index), index)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            log.warning("skipping unreadable image %s: %s: %s", path, type(exc).__name__, exc)
            return None, label, index
        return x, label, index


def collate_skip_bad(batch: Sequence[tuple]):
    """Stack ``(x, label, index)`` samples, dropping those whose image could not be read.

    Returns ``(x [B,...], labels [B], indices [B], bad_indices [K])``; B may be 0 for an all-bad batch.
    The bad indices travel with the batch because DataLoader workers cannot report back any other way.
    """
    good = [b for b in batch if b[0] is not None]
    bad = torch.tensor([b[2] for b in batch if b[0] is None], dtype=torch.long)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), bad
    x = torch.stack([b[0] for b in good])
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    indices = torch.tensor([b[2] for b in good], dtype=torch.long)
    return x, labels, indices, bad


class CodeDataset(torch.utils.data.Dataset):
    """Pre-extracted tokenizer codes: ``(codes [tokens] int64, label)`` per image.

    Reads ``<root>/<dataset><size>_codes/<i>.npy`` ([views, tokens]) and the matching label files; each access
    picks one view uniformly at random (the original's ten-crop augmentation). Pass ``generator`` for
    reproducible picks; with ``view=k`` a fixed view is returned (validation).
    """

    def __init__(self, codes_dir: str | os.PathLike, labels_dir: str | os.PathLike, view: int | None = None):
        self.codes_dir, self.labels_dir, self.view = Path(codes_dir), Path(labels_dir), view
        if not self.codes_dir.is_dir():
            raise FileNotFoundError(f"code folder {str(self.codes_dir)!r} does not exist (run extract_codes first)")
        stems = sorted((int(p.stem) for p in self.codes_dir.glob("*.npy") if p.stem.isdigit()))
        self.ids = [i for i in stems if (self.labels_dir / f"{i}.npy").exists()]
        if not self.ids:
            raise FileNotFoundError(f"no complete code/label pairs in {str(self.codes_dir)!r}")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        i = self.ids[index]
        codes = np.load(self.codes_dir / f"{i}.npy")
        label = int(np.load(self.labels_dir / f"{i}.npy"))
        if codes.ndim == 2:
            view = self.view if self.view is not None else int(torch.randint(codes.shape[0], ()).item())
            codes = codes[view]
        return torch.from_numpy(codes.astype(np.int64)), label


def random_crop_arr(pil_image: Image.Image, image_size: int, rng=None, min_crop_frac: float = 0.8,
                    max_crop_frac: float = 1.0) -> Image.Image:
    """ADM random-resized crop (the original training augmentation).

    Short side S drawn uniformly from the integers [ceil(size / max_frac), ceil(size / min_frac)] ([256, 320] for
    256); halve with BOX while the short side >= 2S; BICUBIC-resize the short side to S; crop ``image_size``
    square at a uniformly drawn top (first draw) and left. ``rng``: a ``random.Random`` (default: the module).
    """
    import math
    import random as _random
    rng = rng or _random
    min_side = math.ceil(image_size / max_crop_frac)
    max_side = math.ceil(image_size / min_crop_frac)
    smaller = rng.randrange(min_side, max_side + 1)
    while min(*pil_image.size) >= 2 * smaller:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = smaller / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    top = rng.randrange(arr.shape[0] - image_size + 1)
    left = rng.randrange(arr.shape[1] - image_size + 1)
    return Image.fromarray(arr[top: top + image_size, left: left + image_size])


def train_transform(img: Image.Image, image_size: int, rng=None, hflip: bool = True) -> torch.Tensor:
    """The tokenizer training augmentation: :func:`random_crop_arr`, horizontal flip with p = 0.5, [-1, 1].

    All randomness comes from ``rng`` (a ``random.Random``), so a per-sample seeded generator makes the
    augmentation independent of DataLoader workers and exactly reproducible after a resume.
    """
    import random as _random
    rng = rng or _random
    img = random_crop_arr(img, image_size, rng)
    if hflip and rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return to_model_range(img)
