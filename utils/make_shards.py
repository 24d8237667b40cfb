"""Repack an image folder once into tar shards (webdataset layout) or parquet files (the Hub's layout).

    python -m utils.make_shards --data-path $IMGNET_ROOT/ILSVRC2012_img_train --out /data/imagenet-wds \
        --format tar --prefix imagenet-train --per-shard 1281
    python -m utils.make_shards --data-path $IMGNET_ROOT/ILSVRC2012_img_val --out /data/imagenet-pq \
        --format parquet --prefix validation --per-shard 1000

The image files' bytes are copied unchanged (no re-encoding: the decoded pixels stay identical), in ImageFolder
order, so record ``i`` of the shards is image ``i`` of the folder and every job gives the same tensors from either.
Tar: ``<prefix>-%06d.tar`` with members ``<class>/<stem>.<ext>`` (one extension for all, the first file's) and
``<class>/<stem>.cls`` (the class index), as ``timm/imagenet-1k-wds``. Parquet: ``<prefix>-%05d-of-%05d.parquet``
with an ``image`` struct (``bytes``, ``path``) and a ``label`` ``ClassLabel`` (the folder names), as
``ILSVRC/imagenet-1k``. Files that do not decode are copied too (reported here, and reported and skipped when read,
as the image files are); ``--drop-unreadable`` leaves them out.
"""
from __future__ import annotations

import argparse
import io
import os
import tarfile
from pathlib import Path

from PIL import Image

from utils.data import list_images
from utils.train_data import UNREADABLE_ERRORS


def _readable(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
        return True
    except UNREADABLE_ERRORS:
        return False


def _key(path: Path, root: Path) -> str:
    """``<class>/<stem>``; webdataset keys end at the first dot of the file name, so dots in the stem become ``_``."""
    rel = path.relative_to(root)
    name = rel.stem.replace(".", "_")
    return name if rel.parent == Path(".") else f"{rel.parent.as_posix()}/{name}"


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: the same folder gives the same bytes
    tf.addfile(info, io.BytesIO(data))


def make_shards(data_path: str | os.PathLike, out: str | os.PathLike, fmt: str = "tar", prefix: str = "train",
                per_shard: int = 1000, drop_unreadable: bool = False, max_images: int | None = None) -> dict:
    """Write the shards; returns ``{"files", "images", "unreadable"}``."""
    items, classes = list_images(data_path)
    items = items[:max_images]
    root, out = Path(data_path), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unreadable, kept = [], []
    for path, label in items:
        data = path.read_bytes()
        if not _readable(data):
            unreadable.append(str(path))
            print(f"[make_shards] unreadable image {path}" + (" (left out)" if drop_unreadable else
                                                              " (copied; skipped when read)"))
            if drop_unreadable:
                continue
        kept.append((path, label))
    groups = [kept[i: i + per_shard] for i in range(0, len(kept), per_shard)]
    # one image extension for every member: readers decode by content (PIL), but Hugging Face's webdataset builder
    # keeps only the columns of its first records, so a later .png beside .jpg members would lose its image
    ext = kept[0][0].suffix.lower().lstrip(".").replace("jpeg", "jpg") if kept else "jpg"
    files, keys = [], set()
    for number, group in enumerate(groups):
        if fmt == "tar":
            dest = out / f"{prefix}-{number:06d}.tar"
            tmp = dest.with_name(f".{dest.name}.tmp")
            with tarfile.open(tmp, "w") as tf:
                for path, label in group:
                    key = _key(path, root)
                    if key in keys:  # a.jpg beside a.png
                        key = f"{key}_{len(keys)}"
                    keys.add(key)
                    _add(tf, f"{key}.{ext}", path.read_bytes())
                    _add(tf, f"{key}.cls", str(label).encode())
        else:
            import datasets

            dest = out / f"{prefix}-{number:05d}-of-{len(groups):05d}.parquet"
            tmp = dest.with_name(f".{dest.name}.tmp")
            features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
            table = datasets.Dataset.from_dict(
                {"image": [{"bytes": p.read_bytes(), "path": p.name} for p, _ in group],
                 "label": [label for _, label in group]}, features=features)
            table.to_parquet(str(tmp))
        os.replace(tmp, dest)
        files.append(str(dest))
    return {"files": files, "images": len(kept), "unreadable": unreadable, "classes": classes}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", required=True, help="ImageFolder tree (class sub-folders) or flat image folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=["tar", "parquet"], default="tar", help="tar (webdataset layout) or parquet")
    p.add_argument("--prefix", default="train", help="shard file name prefix (e.g. imagenet-train, validation)")
    p.add_argument("--per-shard", type=int, default=1000, help="images per shard")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images")
    p.add_argument("--drop-unreadable", action="store_true", help="leave out files that do not decode")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = make_shards(args.data_path, args.out, args.format, args.prefix, args.per_shard, args.drop_unreadable,
                         args.max_images)
    print(f"[make_shards] {result['images']} images in {len(result['files'])} {args.format} shards under {args.out}"
          + (f"; {len(result['unreadable'])} unreadable" if result["unreadable"] else ""))
    return result


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "make_shards")
