"""Convert extracted codes between the original's per-image layout and the packed layout.

    python -m autoregressive.convert_codes --code-path CODES --to packed       # <dataset><size>_codes/ -> _packed/
    python -m autoregressive.convert_codes --code-path CODES --to per-image    # _packed/ -> _codes/ + _labels/

Values are copied exactly (int64 <-> the packed dtype), so training reads the same samples from either layout.
The packed array has one row per image index up to the largest one found; indices without files (images that were
unreadable at extraction) get label -1 and are skipped by the readers, as their missing files are. The tokenizer
identity and crop settings come from ``extract_settings.json`` beside the codes (kept in the index).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from autoregressive.extract_codes import _save_atomic_npy, code_dirs
from autoregressive.packed_codes import PackedCodes, PackedWriter, chunk_ranges, packed_dir, read_index

IDENTITY_KEYS = ("vq_ckpt_sha256", "tokenizer_config", "weights_entry", "image_size", "ten_crop", "crop_range",
                 "precision")


def to_packed(code_path: str | os.PathLike, dataset: str, image_size: int, out_path: str | os.PathLike | None = None,
              chunk_size: int = 4096, codebook_size: int | None = None) -> dict:
    """Per-image files under ``code_path`` -> a packed folder under ``out_path`` (default: ``code_path``)."""
    codes_dir, labels_dir = code_dirs(code_path, dataset, image_size)
    stems = sorted(int(p.stem) for p in codes_dir.glob("*.npy") if p.stem.isdigit())
    ids = [i for i in stems if (labels_dir / f"{i}.npy").exists()]
    if not ids:
        raise FileNotFoundError(f"no complete code/label pairs in {str(codes_dir)!r}")
    settings_file = Path(code_path) / "extract_settings.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    first = np.load(codes_dir / f"{ids[0]}.npy")
    views, tokens = (1, first.shape[0]) if first.ndim == 1 else first.shape
    codebook_size = codebook_size or settings.get("codebook_size")
    if codebook_size is None:  # no record: the ids seen decide the dtype
        codebook_size = 1 + max(int(np.load(codes_dir / f"{i}.npy").max()) for i in ids)
    identity = {k: settings[k] for k in IDENTITY_KEYS if k in settings}
    folder = packed_dir(out_path or code_path, dataset, image_size)
    writer = PackedWriter.create(folder, ids[-1] + 1, views, tokens, int(codebook_size), chunk_size, **identity)
    have = set(ids)
    for start, end in tqdm(chunk_ranges(ids[-1] + 1, chunk_size), desc="per-image -> packed"):
        codes = np.zeros((end - start, views, tokens), writer.dtype)
        labels = np.full(end - start, -1, np.int64)
        for i in range(start, end):
            if i in have:
                codes[i - start] = np.load(codes_dir / f"{i}.npy").reshape(views, tokens)
                labels[i - start] = int(np.load(labels_dir / f"{i}.npy"))
        writer.write_chunk(start, codes, labels)
    extra = {"classes": settings["classes"]} if "classes" in settings else {}
    return writer.finish(converted_from=str(codes_dir), **extra)


def to_per_image(code_path: str | os.PathLike, dataset: str, image_size: int,
                 out_path: str | os.PathLike | None = None) -> dict:
    """A packed folder under ``code_path`` -> int64 per-image files (the original's layout) under ``out_path``."""
    folder = packed_dir(code_path, dataset, image_size)
    packed = PackedCodes(folder)
    index = read_index(folder)
    codes_all, labels = packed.arrays()
    out = Path(out_path or code_path)
    codes_dir, labels_dir = code_dirs(out, dataset, image_size)
    codes_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    for i in tqdm(packed.ids.tolist(), desc="packed -> per-image"):
        _save_atomic_npy(codes_dir / f"{i}.npy", np.asarray(codes_all[i], dtype=np.int64))
        _save_atomic_npy(labels_dir / f"{i}.npy", np.array(int(labels[i]), dtype=np.int64))
    settings_file = out / "extract_settings.json"
    if not settings_file.is_file():  # what train_c2i checks the tokenizer against
        settings_file.write_text(json.dumps({k: index[k] for k in ("images", "views", "tokens", "codebook_size",
                                                                   "classes", *IDENTITY_KEYS) if k in index},
                                            indent=2))
    return {"images": len(packed.ids), "codes_dir": str(codes_dir), "labels_dir": str(labels_dir)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--code-path", required=True, help="the --code-path given to extract_codes")
    p.add_argument("--to", choices=["packed", "per-image"], required=True, help="the layout to write")
    p.add_argument("--out-path", default=None, help="where to write (default: --code-path, beside the source)")
    p.add_argument("--dataset", default="imagenet", help="the --dataset name given to extract_codes")
    p.add_argument("--image-size", type=int, default=256, help="the image size of the codes (folder name)")
    p.add_argument("--chunk-size", type=int, default=4096, help="packed: images per written range")
    p.add_argument("--codebook-size", type=int, default=None,
                   help="packed: codebook size (default: extract_settings.json's, else the largest id + 1)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.to == "packed":
        result = to_packed(args.code_path, args.dataset, args.image_size, args.out_path, args.chunk_size,
                           args.codebook_size)
        print(f"[convert_codes] {result['valid']} images packed into "
              f"{packed_dir(args.out_path or args.code_path, args.dataset, args.image_size)} ({result['dtype']})")
    else:
        result = to_per_image(args.code_path, args.dataset, args.image_size, args.out_path)
        print(f"[convert_codes] {result['images']} images written to {result['codes_dir']}")
    return result


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "convert_codes")
