"""Data-loading throughput and sizes: what it takes to keep the GPUs fed.

    python -m benchmarks.bench_data [--images 64] [--codes 2000] [--gpu-images-per-s 737] [--gpu-codes-per-s 1180]

Measured, each in one process on one core (``torch.set_num_threads(1)``, no DataLoader workers), so the rates are
per CPU core:

- codes: bytes on disk of ImageNet-shaped rows (10 views x 256 tokens, ids < 16384) as the original's int64 file
  pairs vs one packed int16 array, and training samples/s (read one row, pick a view) from each;
- images (with ``--images N`` > 0): decode + the training augmentation (random-resized crop + flip, [-1, 1]) per
  second for JPEG files in an ImageFolder vs the same JPEGs in tar shards, with PIL and with torchvision.io's
  libjpeg-turbo decoder.

``--gpu-*-per-s``: the per-GPU training throughput to feed; the script prints the cores per GPU that it implies.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _disk(path: Path) -> int:
    """Bytes allocated on disk (block-rounded), which is what millions of small files cost."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def code_bytes(root: str | os.PathLike, n: int = 256, views: int = 10, tokens: int = 256,
               codebook_size: int = 16384, seed: int = 0) -> dict:
    """Write ``n`` random rows both ways (per-image int64 through ``np.save`` as extract_codes, packed through the
    converter) under ``root`` and measure their sizes: file bytes and block-rounded disk bytes."""
    from autoregressive.convert_codes import to_packed
    from autoregressive.extract_codes import code_dirs
    from autoregressive.packed_codes import packed_dir

    root = Path(root)
    rng = np.random.default_rng(seed)
    per = root / "per_image"
    codes_dir, labels_dir = code_dirs(per, "imagenet", 256)
    codes_dir.mkdir(parents=True)
    labels_dir.mkdir(parents=True)
    for i in range(n):
        np.save(codes_dir / f"{i}.npy", rng.integers(0, codebook_size, (views, tokens), dtype=np.int64))
        np.save(labels_dir / f"{i}.npy", np.array(i % 1000, dtype=np.int64))
    index = to_packed(per, "imagenet", 256, root / "packed", codebook_size=codebook_size)
    folder = packed_dir(root / "packed", "imagenet", 256)
    arrays = [folder / "codes.npy", folder / "labels.npy"]  # the markers and index are a few KB per split
    return {"images": n, "packed_dtype": index["dtype"],
            "per_image_bytes": _size(per), "per_image_disk": _disk(per),
            "packed_bytes": sum(p.stat().st_size for p in arrays),
            "packed_disk": sum(p.stat().st_blocks * 512 for p in arrays),
            "per_image_dir": str(per), "packed_dir": str(folder)}


def code_rates(per_image_dir: Path, packed_dir: Path, n: int) -> dict:
    """Training samples/s from each layout (one random view per access, as TrainCodeDataset)."""
    from autoregressive.data import TrainCodeDataset
    from autoregressive.extract_codes import code_dirs

    out = {}
    for name, ds in (("per_image", TrainCodeDataset(*code_dirs(per_image_dir, "imagenet", 256), use_alternative=False)),
                     ("packed", TrainCodeDataset(packed_dir, None, use_alternative=False))):
        order = np.random.default_rng(1).permutation(len(ds))
        reps = max(1, n // len(ds))
        start = time.perf_counter()
        for epoch in range(reps):
            for i in order:
                ds[(int(i), epoch)]
        out[name] = reps * len(ds) / (time.perf_counter() - start)
    return out


def make_jpegs(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` ImageNet-like JPEGs (about 500 x 375, smooth content plus noise, quality 90) in two classes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / f"n{i % 2:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(330, 420)), int(rng.integers(450, 520))
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h) + 64], -1)
        arr = np.clip(base + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i:05d}.JPEG", quality=90)
    return root


def decode_torchvision(data: bytes):
    """JPEG bytes -> RGB PIL image through torchvision.io's libjpeg-turbo decoder (other formats: PIL)."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    if data[:2] != b"\xff\xd8":
        import io

        from utils.data import to_rgb
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_rgb(img)
    tensor = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return Image.fromarray(tensor.permute(1, 2, 0).numpy())


def image_rates(folder: Path, shards: Path, n: int) -> dict:
    """Decode + training augmentation per second (one core) through the training dataset (files, tar shards) and from
    bytes in memory (PIL vs torchvision.io), decode alone, and whether torchvision's decoder gives PIL's pixels."""
    import io

    from PIL import Image

    from utils.data import train_transform
    from utils.train_data import AugmentedImageFolder

    out: dict = {}
    for name, source in (("imagefolder_pil", folder), ("tar_shards_pil", shards)):
        ds = AugmentedImageFolder(source, 256)
        ds[(0, 0)]  # warm up (opens the Arrow files)
        start = time.perf_counter()
        for i in range(n):
            ds[(i, 0)]
        out[name] = n / (time.perf_counter() - start)
    files = [p for p in sorted(folder.rglob("*.JPEG"))][:n]
    blobs = [p.read_bytes() for p in files]
    for name, decode in (("decode_only_pil", None), ("decode_only_torchvision", decode_torchvision),
                         ("bytes_pil", None), ("bytes_torchvision", decode_torchvision)):
        import random

        start = time.perf_counter()
        for i, data in enumerate(blobs):
            if decode is None:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                    img = img.convert("RGB")
            else:
                img = decode(data)
            if name.startswith("bytes"):
                train_transform(img, 256, random.Random(i))
        out[name] = n / (time.perf_counter() - start)
    same = 0
    for data in blobs:
        with Image.open(io.BytesIO(data)) as img:
            pil = np.asarray(img.convert("RGB"))
        same += int(np.array_equal(pil, np.asarray(decode_torchvision(data))))
    out["torchvision_identical_pixels"] = f"{same}/{len(blobs)}"
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codes", type=int, default=2000, help="rows written per code layout")
    p.add_argument("--images", type=int, default=64, help="JPEGs decoded per image path (0: skip images)")
    p.add_argument("--gpu-codes-per-s", type=float, default=1180.0,
                   help="GPT training samples/s per GPU to feed")
    p.add_argument("--gpu-images-per-s", type=float, default=737.0,
                   help="tokenizer-training (or on-the-fly tokenisation) images/s per GPU to feed")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    results: dict = {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        sizes = code_bytes(Path(tmp) / "codes", n=args.codes)
        rates = code_rates(Path(sizes["per_image_dir"]).parent / "per_image", Path(sizes["packed_dir"]), args.codes)
        results["codes"] = {**sizes, "samples_per_s": rates}
        n = args.codes
        print(f"codes ({n} rows of 10 x 256, 16384 ids): per-image int64 {sizes['per_image_bytes'] / n:.0f} B/image "
              f"({sizes['per_image_disk'] / n:.0f} on disk), packed {sizes['packed_dtype']} "
              f"{sizes['packed_bytes'] / n:.0f} B/image: {sizes['per_image_bytes'] / sizes['packed_bytes']:.2f}x "
              f"fewer bytes ({sizes['per_image_disk'] / sizes['packed_disk']:.2f}x on disk)")
        for name, rate in rates.items():
            print(f"  {name}: {rate:,.0f} samples/s per core -> {args.gpu_codes_per_s / rate:.2f} cores per GPU at "
                  f"{args.gpu_codes_per_s:,.0f} samples/s")
        if args.images:
            from utils.make_shards import make_shards

            folder = make_jpegs(Path(tmp) / "jpegs", args.images)
            make_shards(folder, Path(tmp) / "wds", "tar", per_shard=max(1, args.images // 4))
            rates = image_rates(folder, Path(tmp) / "wds", args.images)
            results["images"] = rates
            print(f"images ({args.images} JPEGs of ~500 x 375, random-resized crop to 256 + flip, per core):")
            for name, rate in rates.items():
                if isinstance(rate, str):
                    print(f"  {name}: {rate}")
                    continue
                feed = "" if name.startswith("decode_only") else \
                    f" -> {args.gpu_images_per_s / rate:.1f} cores per GPU at {args.gpu_images_per_s:,.0f} images/s"
                print(f"  {name}: {rate:,.1f} images/s{feed}")
    return results


if __name__ == "__main__":
    main()
