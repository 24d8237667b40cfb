"""Tokenise an image folder once so GPT training can read codes instead of running the tokenizer.

Layout (as the original): ``<code-path>/<dataset><size>_codes/<i>.npy`` int64 [views, tokens] and
``<code-path>/<dataset><size>_labels/<i>.npy`` int64 scalar, ``i`` the ImageFolder index. Views: ten-crop of an
ADM centre crop enlarged by ``--crop-range`` (10 views), or the centre crop and its mirror (2 views).
Files are written atomically (labels last), so ``--resume`` after a kill skips exactly the finished images.
Runs alone or under torchrun (each rank takes every world_size-th image). The weights are the checkpoint's
``model`` entry, as the original (``--use-ema`` for ``ema``); TF32 is on for CUDA as the original (``--no-tf32``).
A tokenizer checkpoint that stores its config (a training checkpoint, a ``save_pretrained`` folder) needs no
``--model-config`` (given, it must build the same model); ``--image-size`` defaults to the tokenizer's.

``--format packed`` writes ``<code-path>/<dataset><size>_packed/`` instead (see :mod:`autoregressive.packed_codes`):
one ``[N, views, tokens]`` array in the smallest integer type holding the codebook, labels ``[N]`` and an
``index.json``. The images are cut into ranges of ``--chunk-size``; rank ``r`` of ``W`` encodes ranges ``r, r + W,
...`` and writes each one in place (no gather), then drops its marker; ``--resume`` redoes only
ranges without one.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import functional as TF
from tqdm import tqdm

from autoregressive.packed_codes import PackedWriter, chunk_ranges, packed_dir, read_index
from tokenizer import load_tokenizer, read_tokenizer_config, settle_tokenizer_config, tokenizer_info
from utils.checkpoint import resolve_checkpoint, sha256_file
from utils.compat import add_inert_flags
from utils.data import ImageFolderDataset, center_crop_arr, collate_skip_bad, to_model_range
from utils.distributed import barrier, finish, init_distributed
from utils.training import PRECISIONS, autocast, autocast_dtype, configure_tf32


def code_dirs(code_path: str | os.PathLike, dataset: str = "imagenet", image_size: int = 256) -> tuple[Path, Path]:
    root = Path(code_path)
    return root / f"{dataset}{image_size}_codes", root / f"{dataset}{image_size}_labels"


def view_transform(image_size: int, ten_crop: bool, crop_range: float):
    """PIL image -> [views, 3, S, S] in [-1, 1]."""
    def transform(img):
        if ten_crop:
            big = center_crop_arr(img, int(image_size * crop_range))
            views = TF.ten_crop(big, image_size)
        else:
            crop = center_crop_arr(img, image_size)
            views = (crop, TF.hflip(crop))
        return torch.stack([to_model_range(v) for v in views])
    return transform


def _save_atomic_npy(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


def _encoder(model, device: torch.device, precision: str):
    """[B, views, 3, S, S] images -> [B, views, tokens] int codes (numpy)."""
    def encode(x: torch.Tensor) -> np.ndarray:
        b, v = x.shape[:2]
        with autocast(device, autocast_dtype(precision)):
            return model.encode_to_codes(x.flatten(0, 1).to(device)).reshape(b, v, -1).cpu().numpy()
    return encode


def _extract_per_image(args, dist, dataset, n_images: int, encode) -> tuple[int, list[int]]:
    codes_dir, labels_dir = code_dirs(args.code_path, args.dataset, args.image_size)
    if dist.is_main:
        codes_dir.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    todo = list(range(n_images))
    if args.resume:
        todo = [i for i in todo if not ((codes_dir / f"{i}.npy").exists() and (labels_dir / f"{i}.npy").exists())]
    mine = todo[dist.rank:: dist.world_size]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=args.batch_size,
                                         num_workers=args.num_workers, collate_fn=collate_skip_bad)
    written, skipped = 0, []
    for x, labels, indices, bad in tqdm(loader, disable=not dist.is_main, desc="extract codes"):
        skipped.extend(int(i) for i in bad)
        if x.numel() == 0:
            continue
        codes = encode(x).astype(np.int64)
        for code, label, i in zip(codes, labels.tolist(), indices.tolist(), strict=True):
            _save_atomic_npy(codes_dir / f"{i}.npy", code)
            _save_atomic_npy(labels_dir / f"{i}.npy", np.array(label, dtype=np.int64))
            written += 1
    return written, skipped


def _extract_packed(args, dist, dataset, n_images: int, encode, folder: Path, identity: dict, tokens: int,
                    codebook_size: int) -> tuple[int, list[int]]:
    """Rank-local ranges written in place; a range is complete (and skipped by ``--resume``) once its marker
    exists. Nothing crosses ranks but two barriers."""
    views = 10 if args.ten_crop else 2
    layout = {"images": n_images, "views": views, "tokens": tokens, "codebook_size": codebook_size,
              "chunk_size": args.chunk_size}
    if dist.is_main:
        reuse = False
        if args.resume and (folder / "index.json").is_file():
            old = read_index(folder)
            for key, value in {**identity, **layout}.items():
                if old.get(key) != value:
                    raise ValueError(f"--resume into {folder}: it was extracted with {key}={old.get(key)!r}, this run "
                                     f"has {value!r}; use another --code-path (or the same settings)")
            reuse = True
        if not reuse:
            PackedWriter.create(folder, n_images, views, tokens, codebook_size, args.chunk_size, **identity)
    barrier()
    writer = PackedWriter(folder)
    todo = [r for r in chunk_ranges(n_images, args.chunk_size) if not (args.resume and writer.done(*r))]
    mine = todo[dist.rank:: dist.world_size]
    indices = [i for start, end in mine for i in range(start, end)]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=args.batch_size,
                                         num_workers=args.num_workers, collate_fn=collate_skip_bad)
    buffers: dict[int, list] = {}  # range start -> [codes, labels, images seen]
    written, skipped = 0, []

    def take(i: int, code: np.ndarray | None, label: int) -> None:
        nonlocal written
        start = i - i % args.chunk_size  # ranges are aligned to multiples of the chunk size
        if start not in buffers:
            size = min(start + args.chunk_size, n_images) - start
            buffers[start] = [np.zeros((size, views, tokens), writer.dtype), np.full(size, -1, np.int64), 0]
        buf = buffers[start]
        if code is not None:
            buf[0][i - start], buf[1][i - start] = code, label
        buf[2] += 1
        if buf[2] == len(buf[1]):
            writer.write_chunk(start, buf[0], buf[1])
            written += int((buf[1] >= 0).sum())
            del buffers[start]

    for x, labels, idx, bad in tqdm(loader, disable=not dist.is_main, desc="extract codes (packed)"):
        skipped.extend(int(i) for i in bad)
        codes = encode(x) if x.numel() else []
        for code, label, i in zip(codes, labels.tolist(), idx.tolist(), strict=True):
            take(i, code, label)
        for i in bad.tolist():
            take(i, None, -1)
    return written, skipped


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-path", required=True, help="ImageFolder-style image tree (e.g. ILSVRC2012_img_train)")
    p.add_argument("--code-path", required=True, help="output folder for the code and label files")
    p.add_argument("--dataset", default="imagenet", help="dataset name used in the output folder names")
    p.add_argument("--image-size", type=int, default=None,
                   help="crop size (default: the tokenizer's; another size runs the tokenizer at that size, its "
                        "position tables resampled: see Detailed_instructions, 'Fine-tuning on your own images')")
    p.add_argument("--ten-crop", action="store_true", help="10 views (ten-crop) instead of centre crop + mirror")
    p.add_argument("--crop-range", type=float, default=1.1, help="ten-crop source size = image-size * crop-range")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch and process")
    p.add_argument("--num-workers", type=int, default=4, help="DataLoader workers per process")
    p.add_argument("--model-config", "--tok-config", dest="model_config", default=None,
                   help="tokenizer YAML (default: the checkpoint's stored config, or the released model's YAML)")
    p.add_argument("--vq-ckpt", required=True, help="tokenizer weights (local file, released name, hf://...)")
    add_inert_flags(p, "--quant-way")
    p.add_argument("--format", choices=["per-image", "packed"], default="per-image",
                   help="per-image: two int64 .npy files per image (the original's layout); packed: one memory-mapped "
                        "array per split (autoregressive.packed_codes)")
    p.add_argument("--chunk-size", type=int, default=1024,
                   help="packed: images per written range (the unit of work, of durability and of --resume)")
    p.add_argument("--resume", action="store_true",
                   help="skip images whose code and label files both exist (packed: ranges already written)")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images")
    p.add_argument("--use-ema", action="store_true",
                   help="encode with the checkpoint's 'ema' weights (default: 'model', as the original)")
    p.add_argument("--precision", choices=list(PRECISIONS), default="none",
                   help="autocast dtype of the encoder (none = fp32, as the original; the codes may differ otherwise)")
    p.add_argument("--no-tf32", action="store_true", help="keep TF32 off on CUDA (the original turns it on)")
    p.add_argument("--device", default="auto", help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--global-seed", type=int, default=0, help="unused (extraction is deterministic); kept for "
                   "compatibility with the original's flags")
    return p.parse_args(argv)


@torch.no_grad()
def main(argv=None) -> dict:
    args = parse_args(argv)
    dist = init_distributed(args.device)
    args.device = str(dist.device)
    configure_tf32(dist.device, not args.no_tf32)
    if dist.is_main:
        resolve_checkpoint(args.vq_ckpt)
    barrier()
    ckpt = resolve_checkpoint(args.vq_ckpt)
    args.model_config = settle_tokenizer_config(args.vq_ckpt, args.model_config, flag="--model-config")
    cfg = read_tokenizer_config(args.model_config)
    args.image_size = args.image_size or tokenizer_info(cfg)["image_size"]
    config_label = f"stored in {args.vq_ckpt}" if isinstance(args.model_config, dict) else str(args.model_config)
    ckpt_sha256 = sha256_file(ckpt)
    entry = "ema" if args.use_ema else "model"
    identity = {"vq_ckpt_sha256": ckpt_sha256, "tokenizer_config": config_label, "weights_entry": entry,
                "image_size": args.image_size, "ten_crop": args.ten_crop,
                "crop_range": args.crop_range if args.ten_crop else None,
                "precision": "none" if args.precision == "fp32" else args.precision}
    settings_file = Path(args.code_path) / "extract_settings.json"
    if args.resume and settings_file.is_file():  # finished codes are kept only if they were made the same way
        old = json.loads(settings_file.read_text())
        for key, value in identity.items():
            if key in old and old[key] != value:
                raise ValueError(f"--resume into {args.code_path}: its codes were extracted with {key}={old[key]!r}, "
                                 f"this run has {value!r}; use another --code-path (or the same tokenizer and crops)")
    # another --image-size than the tokenizer's: its position tables are resampled (tokenizer.resolution)
    native = tokenizer_info(cfg)["image_size"]
    model = load_tokenizer(cfg, ckpt, device=dist.device, entries=(entry,),
                           image_size=args.image_size if args.image_size != native else None)
    view_fn = view_transform(args.image_size, args.ten_crop, args.crop_range)
    dataset = ImageFolderDataset(args.data_path, args.image_size, transform=view_fn)
    n_images = len(dataset) if args.max_images is None else min(args.max_images, len(dataset))
    encode = _encoder(model, dist.device, args.precision)
    if args.format == "packed":
        folder = packed_dir(args.code_path, args.dataset, args.image_size)
        written, skipped = _extract_packed(args, dist, dataset, n_images, encode, folder, identity,
                                           model.num_tokens, model.codebook_size)
        where = f"packed codes in {folder}"
    else:
        written, skipped = _extract_per_image(args, dist, dataset, n_images, encode)
        where = "codes in {}, labels in {}".format(*code_dirs(args.code_path, args.dataset, args.image_size))
    for i in skipped:
        print(f"[extract_codes] rank {dist.rank}: skipped unreadable image {dataset.items[i][0]}")
    barrier()
    summary = {"images": len(dataset), "written_by_rank0": written, "format": args.format,
               "views": 10 if args.ten_crop else 2,
               "tokens": model.num_tokens, "classes": dataset.classes, "tokenizer_config": config_label,
               "vq_ckpt": str(args.vq_ckpt), "codebook_size": model.codebook_size, "tf32": not args.no_tf32,
               "device": args.device, **identity}
    if dist.is_main:
        if args.format == "packed":
            summary["packed"] = PackedWriter(folder).finish(classes=dataset.classes)
        settings_file.write_text(json.dumps(summary, indent=2))
        print(f"[extract_codes] {where}")
    finish()
    return summary


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "extract_codes")
