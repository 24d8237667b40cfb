"""Packed codes: one memory-mappable array per split instead of two ``.npy`` files per image.

Layout of ``<code-path>/<dataset><size>_packed/``:

- ``codes.npy``: ``[N, views, tokens]`` in the smallest signed integer type that holds the codebook (int16 for
  16384 codes), row ``i`` = image ``i`` of the ImageFolder order (as ``<i>.npy`` of the per-image layout);
- ``labels.npy``: ``[N]`` int64; ``-1`` marks an image that could not be read (its row is zeros and is never used);
- ``index.json``: the format, the counts, the dtype, the chunk size, the tokenizer's sha256 and the crop settings
  (what ``extract_codes`` checks before a resume) and ``complete``;
- ``chunks/<start>-<end>.done``: one marker per finished range of ``chunk_size`` images.

Both arrays are ordinary ``.npy`` files (``np.load(..., mmap_mode="r")`` reads them). Writers never gather: each rank
writes the rows of its chunks with positioned writes (``os.pwrite``: byte-exact, unlike a shared ``mmap`` whose
page-sized write-back could clobber a neighbour's rows on a network filesystem), ``fsync``s them and then drops the
chunk's marker, so a killed extraction redoes only the chunks without a marker.

The readers (:class:`PackedCodes`) give the same samples as :class:`utils.data.CodeDataset` over the per-image files
of the same extraction (same ids, same view draw from the global torch RNG, int64 codes), so training and validation
are bit-identical on either layout. ``python -m autoregressive.convert_codes`` converts between the two.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["FORMAT", "code_dtype", "packed_dir", "is_packed", "PackedCodes", "PackedWriter", "open_codes",
           "read_index", "chunk_ranges"]

FORMAT = "gigatok-packed-codes"
VERSION = 1


def code_dtype(codebook_size: int) -> np.dtype:
    """The smallest signed integer dtype holding ids ``0 .. codebook_size - 1`` (signed: PyTorch indexes with
    signed integers, and int16 already holds the released 16384-entry codebooks)."""
    for dtype in (np.int8, np.int16, np.int32):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def packed_dir(code_path: str | os.PathLike, dataset: str = "imagenet", image_size: int = 256) -> Path:
    return Path(code_path) / f"{dataset}{image_size}_packed"


def is_packed(folder: str | os.PathLike) -> bool:
    return (Path(folder) / "index.json").is_file()


def read_index(folder: str | os.PathLike) -> dict:
    index = json.loads((Path(folder) / "index.json").read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{folder}/index.json is not a packed-codes index (format {index.get('format')!r})")
    return index


def write_index(folder: Path, index: dict) -> None:
    tmp = folder / ".index.json.tmp"
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, folder / "index.json")


def chunk_ranges(n: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


def _marker(folder: Path, start: int, end: int) -> Path:
    return folder / "chunks" / f"{start:010d}-{end:010d}.done"


def _data_offset(path: Path) -> int:
    """Byte offset of the array data in a ``.npy`` file (after its header)."""
    return int(np.load(path, mmap_mode="r").offset)


class PackedWriter:
    """Creates (rank 0) or reopens a packed folder and writes whole chunks of rows.

    ``create`` preallocates both arrays (sparse files) and removes old markers; ``open`` on any rank returns a
    writer over the existing files. ``write_chunk`` is safe from several processes at once for disjoint chunks.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        self.views, self.tokens = int(self.index["views"]), int(self.index["tokens"])
        self.dtype = np.dtype(self.index["dtype"])
        self.row_bytes = self.views * self.tokens * self.dtype.itemsize
        self.codes_path, self.labels_path = self.folder / "codes.npy", self.folder / "labels.npy"
        self.codes_offset, self.labels_offset = _data_offset(self.codes_path), _data_offset(self.labels_path)

    @classmethod
    def create(cls, folder: str | os.PathLike, n: int, views: int, tokens: int, codebook_size: int,
               chunk_size: int, **identity) -> PackedWriter:
        folder = Path(folder)
        (folder / "chunks").mkdir(parents=True, exist_ok=True)
        for marker in (folder / "chunks").glob("*.done"):
            marker.unlink()
        if (folder / "index.json").exists():
            (folder / "index.json").unlink()  # a half-rewritten folder must not look like the old one
        dtype = code_dtype(codebook_size)
        # open_memmap writes the header and sizes the file without touching the data pages (sparse)
        np.lib.format.open_memmap(folder / "codes.npy", mode="w+", dtype=dtype, shape=(n, views, tokens)).flush()
        labels = np.lib.format.open_memmap(folder / "labels.npy", mode="w+", dtype=np.int64, shape=(n,))
        labels[:] = -1
        labels.flush()
        del labels
        write_index(folder, {"format": FORMAT, "version": VERSION, "images": n, "views": views, "tokens": tokens,
                             "codebook_size": codebook_size, "dtype": dtype.name, "chunk_size": chunk_size,
                             "complete": False, **identity})
        return cls(folder)

    def done(self, start: int, end: int) -> bool:
        return _marker(self.folder, start, end).exists()

    def write_chunk(self, start: int, codes: np.ndarray, labels: np.ndarray) -> None:
        """Rows ``start .. start + len(labels) - 1``; durable before the chunk's marker appears."""
        end = start + len(labels)
        codes = np.ascontiguousarray(codes, dtype=self.dtype)
        if codes.shape != (len(labels), self.views, self.tokens):
            raise ValueError(f"chunk codes {codes.shape} != ({len(labels)}, {self.views}, {self.tokens})")
        if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= int(self.index["codebook_size"])):
            raise ValueError("code ids outside the codebook")
        for path, offset, array in ((self.codes_path, self.codes_offset + start * self.row_bytes, codes),
                                    (self.labels_path, self.labels_offset + start * 8,
                                     np.ascontiguousarray(labels, dtype=np.int64))):
            fd = os.open(path, os.O_WRONLY)
            try:
                data, written = memoryview(array).cast("B"), 0
                while written < len(data):
                    written += os.pwrite(fd, data[written:], offset + written)
                os.fsync(fd)
            finally:
                os.close(fd)
        marker = _marker(self.folder, start, end)
        tmp = marker.with_name(f".{marker.name}.tmp")
        tmp.write_text("")
        os.replace(tmp, marker)

    def finish(self, **extra) -> dict:
        """Rank 0, after every rank is done: check every chunk's marker, count, mark the index complete."""
        missing = [r for r in chunk_ranges(int(self.index["images"]), int(self.index["chunk_size"]))
                   if not self.done(*r)]
        if missing:
            raise RuntimeError(f"{len(missing)} chunks of {self.folder} are unfinished, e.g. {missing[:3]}")
        labels = np.load(self.labels_path, mmap_mode="r")
        skipped = np.flatnonzero(labels < 0)
        self.index.update(complete=True, valid=int(len(labels) - len(skipped)), skipped=skipped.tolist(), **extra)
        write_index(self.folder, self.index)
        return self.index


class PackedCodes(torch.utils.data.Dataset):
    """A packed folder read as :class:`utils.data.CodeDataset`: ``index -> (codes [tokens] int64, label)`` over the
    readable images in order; each access picks a view from the global torch RNG (``view=k`` fixes it).

    The arrays are memory-mapped on first access in each process (DataLoader workers open their own maps).
    """

    def __init__(self, folder: str | os.PathLike, view: int | None = None):
        self.folder, self.view = Path(folder), view
        self.index = read_index(self.folder)
        if not self.index.get("complete"):
            raise FileNotFoundError(f"packed codes in {str(self.folder)!r} are incomplete (extraction was "
                                    f"interrupted): rerun extract_codes with --resume")
        labels = np.load(self.folder / "labels.npy", mmap_mode="r")
        self.ids = np.flatnonzero(labels >= 0)
        if not len(self.ids):
            raise FileNotFoundError(f"no readable images in {str(self.folder)!r}")
        self._codes: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_codes": None, "_labels": None}  # maps are reopened, not pickled

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._codes is None:
            self._codes = np.load(self.folder / "codes.npy", mmap_mode="r")
            self._labels = np.load(self.folder / "labels.npy", mmap_mode="r")
        return self._codes, self._labels

    def __getitem__(self, index: int):
        codes_all, labels = self.arrays()
        i = int(self.ids[index])
        codes = codes_all[i]
        view = self.view if self.view is not None else int(torch.randint(codes.shape[0], ()).item())
        return torch.from_numpy(codes[view].astype(np.int64)), int(labels[i])


def open_codes(code_path: str | os.PathLike, dataset: str = "imagenet", image_size: int = 256,
               view: int | None = None):
    """The codes under ``code_path``: packed if ``<dataset><size>_packed/index.json`` exists, else the per-image
    files (``CodeDataset``)."""
    from autoregressive.extract_codes import code_dirs
    from utils.data import CodeDataset

    folder = packed_dir(code_path, dataset, image_size)
    if is_packed(folder):
        return PackedCodes(folder, view=view)
    return CodeDataset(*code_dirs(code_path, dataset, image_size), view=view)
