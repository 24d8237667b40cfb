"""Images from tar shards (webdataset layout) and parquet files (the Hub's layout), read through Hugging Face
``datasets``, with random access so every job keeps its ImageFolder order and resume.

Accepted wherever an image folder is (``--data-path``, ``--train-path`` ...):

- a ``.tar`` / ``.parquet`` file, a folder holding such files (all of them, sorted, searched recursively), or a glob
  (``/data/imagenet-wds/imagenet1k-train-*.tar``): a folder with both train and validation shards needs the glob;
- ``hf://OWNER/NAME[:SPLIT]`` (split ``train`` by default), a Hub dataset through the Hub cache
  (``timm/imagenet-1k-wds``, ``ILSVRC/imagenet-1k``; ``HF_HUB_OFFLINE=1`` reads the cache only).

Tar members follow webdataset: ``<key>.<ext>`` files grouped by key, the image in ``jpg`` / ``jpeg`` / ``png`` /
``webp`` ..., the class index in ``cls``. Parquet rows hold an ``image`` struct (``bytes``, ``path``) and a ``label``
(a ``ClassLabel`` names the classes). The image bytes are decoded exactly as an image file is (PIL, then
:func:`utils.data.to_rgb`), so the same image gives the same tensor from either source; bytes that do not decode are
reported and skipped as unreadable files are.

``datasets`` turns the shards once into memory-mapped Arrow files in its cache (``HF_DATASETS_CACHE``; about the size
of the shards, reused by every later run) and gives map-style random access to them: row ``i`` is the ``i``-th image
in shard order, so samplers keyed by the index (``StepBatchSampler``) are exact and resume exactly, as with folders.

Why ``datasets`` (not ``webdataset`` or timm's readers): it is the only one of the three that reads both layouts the
Hub ships ImageNet in (its ``webdataset`` builder for the tars, ``parquet`` natively) and ``hf://`` names through the
Hub cache, and it gives random access (``webdataset`` and timm's ``wds`` reader are sequential streams, which would
lose the step-indexed order and exact resume; timm's ``hfds`` reader is this same library underneath).
"""
from __future__ import annotations

import glob
import io
import logging
import os
from pathlib import Path

from PIL import Image

__all__ = ["is_sharded", "shard_files", "ShardSource", "IMAGE_COLUMNS", "LABEL_COLUMNS"]

log = logging.getLogger(__name__)
IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image", "img", "ppm", "bmp", "tif", "tiff")
LABEL_COLUMNS = ("cls", "label", "labels", "class")
SHARD_SUFFIXES = (".tar", ".parquet")


def _normalise(source: str | os.PathLike) -> str:
    text = str(source)
    if text.startswith("hf:/") and not text.startswith("hf://"):  # pathlib.Path("hf://a/b") gives "hf:/a/b"
        text = "hf://" + text[len("hf:/"):]
    return text


def is_sharded(source: str | os.PathLike) -> bool:
    """True for an ``hf://`` name, a shard file, a glob of them, or a folder of shards without class sub-folders."""
    text = _normalise(source)
    if text.startswith("hf://"):
        return True
    if text.endswith(SHARD_SUFFIXES) and not Path(text).is_dir():
        return True
    path = Path(text)
    if path.is_dir():  # shards at the top or one folder down (the Hub's data/), never class folders of images
        entries = list(path.iterdir())
        return any(p.suffix in SHARD_SUFFIXES for p in entries) or any(
            q.suffix in SHARD_SUFFIXES for d in entries if d.is_dir() for q in d.iterdir())
    return False


def shard_files(source: str | os.PathLike) -> tuple[str, list[str]]:
    """``(builder, sorted files)`` of a local source: builder ``webdataset`` for tars, ``parquet`` for parquet."""
    text = _normalise(source)
    path = Path(text)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.suffix in SHARD_SUFFIXES)
    elif any(c in text for c in "*?["):
        files = sorted(glob.glob(text, recursive=True))
    else:
        files = [text] if path.is_file() else []
    if not files:
        raise FileNotFoundError(f"no .tar or .parquet shards at {text!r}")
    kinds = {Path(f).suffix for f in files}
    if len(kinds) > 1:
        raise ValueError(f"{text!r} mixes tar and parquet shards; pick one with a glob")
    return ("webdataset" if kinds == {".tar"} else "parquet"), files


def _load(source: str, cache_dir: str | None):
    import datasets

    if source.startswith("hf://"):
        name, _, split = source[len("hf://"):].removeprefix("datasets/").partition(":")
        return datasets.load_dataset(name, split=split or "train", cache_dir=cache_dir)
    builder, files = shard_files(source)
    return datasets.load_dataset(builder, data_files={"train": files}, split="train", cache_dir=cache_dir)


class ShardSource:
    """Random access to the images of a shard source: ``items`` ``[(name, label)]`` in shard order, ``classes``,
    :meth:`load_rgb`. Picklable (DataLoader workers reopen the memory-mapped Arrow files)."""

    def __init__(self, source: str | os.PathLike, cache_dir: str | None = None):
        import datasets

        self.source = _normalise(source)
        ds = _load(self.source, cache_dir or os.environ.get("HF_DATASETS_CACHE"))
        columns = ds.column_names
        self.image_columns = [c for c in IMAGE_COLUMNS if c in columns]
        label_columns = [c for c in LABEL_COLUMNS if c in columns]
        if not self.image_columns:
            raise ValueError(f"{self.source}: no image column among {columns} (expected one of {IMAGE_COLUMNS})")
        # keep the encoded bytes: decoding happens in load_rgb exactly as for an image file
        for column in self.image_columns:
            if isinstance(ds.features[column], datasets.Image):
                ds = ds.cast_column(column, datasets.Image(decode=False))
        self.ds = ds
        # a record none of whose image columns is filled (e.g. a .png member where the builder only kept the .jpg
        # column of its first records) would otherwise look like a corrupt image at every read
        empty = min(ds.data.column(c).null_count for c in self.image_columns) if len(self.image_columns) == 1 else 0
        if empty:
            raise ValueError(f"{self.source}: {empty} records have no {self.image_columns[0]!r} image; the shards mix "
                             f"image extensions, which the datasets webdataset builder does not keep (repack with "
                             f"python -m utils.make_shards, one extension for all)")
        label_column = label_columns[0] if label_columns else None
        labels = [int(v) for v in ds[label_column]] if label_column else [0] * len(ds)
        if "__key__" in columns:
            urls = ds["__url__"] if "__url__" in columns else [""] * len(ds)
            names = [f"{Path(u).name}:{k}" if u else k for u, k in zip(urls, ds["__key__"], strict=True)]
        else:  # parquet rows: the record number, and the file name the image struct keeps (read without the bytes)
            paths = [None] * len(ds)
            column = ds.data.column(self.image_columns[0])
            if hasattr(column.type, "get_field_index") and column.type.get_field_index("path") >= 0:
                import pyarrow.compute as pc

                paths = pc.struct_field(column, "path").to_pylist()
            names = [f"{self.source}[{i}]" + (f" {p}" if p else "") for i, p in enumerate(paths)]
        self.items = list(zip(names, labels, strict=True))
        feature = ds.features.get(label_column) if label_column else None
        if isinstance(feature, datasets.ClassLabel):
            self.classes = list(feature.names)
        else:
            self.classes = [str(c) for c in range(max(labels) + 1)] if labels else []
        if not self.items:
            raise FileNotFoundError(f"no images in {self.source!r}")

    def __len__(self) -> int:
        return len(self.items)

    def image_bytes(self, index: int) -> bytes:
        row = self.ds[index]
        for column in self.image_columns:
            value = row[column]
            if value is None:
                continue
            if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes", "path"}
                if value.get("bytes") is not None:
                    return value["bytes"]
                if value.get("path"):
                    return Path(value["path"]).read_bytes()
                continue
            return bytes(value)
        raise ValueError(f"record {self.items[index][0]} has no image")

    def load_rgb(self, index: int) -> Image.Image:
        """The record's image decoded as :meth:`utils.data.ImageFolderDataset.load_rgb` decodes a file."""
        from utils.data import to_rgb

        with Image.open(io.BytesIO(self.image_bytes(index))) as img:
            img.load()
            return to_rgb(img)
