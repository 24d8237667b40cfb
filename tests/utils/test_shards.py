"""Images from tar shards (webdataset layout) and parquet (utils.shards through HF datasets), written by
utils.make_shards from a small folder: the same items, tensors, random crops and skipped records as the folder; code
extraction, reconstruction, the val npz and tokenizer training run from them with the same results."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils.data import ImageFolderDataset
from utils.make_shards import main as make_shards
from utils.shards import ShardSource, is_sharded, shard_files
from utils.train_data import AugmentedImageFolder, collate_samples

from testlib import CONFIGS, threads

TINY = CONFIGS / "VQ_tiny32.yaml"


def _folder(root: Path) -> Path:
    """Two classes of JPEGs (RGB, greyscale, CMYK) and PNGs (RGBA), sizes 36..60, and one corrupt file."""
    rng = np.random.default_rng(0)
    for i in range(9):
        folder = root / ("n01" if i % 2 else "n00")
        folder.mkdir(parents=True, exist_ok=True)
        h, w = 36 + int(rng.integers(0, 25)), 36 + int(rng.integers(0, 25))
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arr[h // 4: h // 2] = arr[h // 4: h // 2] // 3
        img = Image.fromarray(arr)
        if i % 4 == 1:
            img.convert("RGBA").save(folder / f"img.{i}.png")  # a dot in the stem
        elif i % 4 == 2:
            img.convert("L").save(folder / f"img{i}.JPEG", quality=90)
        elif i % 4 == 3:
            img.convert("CMYK").save(folder / f"img{i}.jpg", quality=85)
        else:
            img.save(folder / f"img{i}.jpg", quality=95)
    (root / "n00" / "img5_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    folder = _folder(root / "folder")
    tar = make_shards(["--data-path", str(folder), "--out", str(root / "wds"), "--format", "tar", "--per-shard", "4",
                       "--prefix", "imagenet-train"])
    pq = make_shards(["--data-path", str(folder), "--out", str(root / "pq" / "data"), "--format", "parquet",
                      "--per-shard", "4"])
    assert len(tar["files"]) == len(pq["files"]) == 3 and tar["images"] == 10 and len(tar["unreadable"]) == 1
    return {"folder": folder, "tar": root / "wds", "parquet": root / "pq", "root": root}


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf_datasets_cache"))


def test_layouts_are_recognised(sources):
    assert not is_sharded(sources["folder"]) and is_sharded(sources["tar"]) and is_sharded(sources["parquet"])
    assert is_sharded(str(sources["tar"] / "imagenet-train-*.tar")) and is_sharded("hf://timm/imagenet-1k-wds")
    assert shard_files(str(sources["tar"] / "imagenet-train-00000[01].tar"))[1][-1].endswith("000001.tar")
    assert shard_files(sources["parquet"])[0] == "parquet"
    names = []
    for shard in shard_files(sources["tar"])[1]:
        with tarfile.open(shard) as tf:
            names += tf.getnames()
    assert names[:2] == ["n00/img0.jpg", "n00/img0.cls"] and "n01/img_1.jpg" in names  # keys, one extension


@pytest.mark.parametrize("kind", ["tar", "parquet"])
def test_same_items_pixels_and_augmented_tensors_as_the_folder(sources, kind, capsys):
    ref, shards = ImageFolderDataset(sources["folder"], 32), ImageFolderDataset(sources[kind], 32)
    assert shards.shards is not None and len(shards) == len(ref) == 10
    assert [label for _, label in shards.items] == [label for _, label in ref.items]
    if kind == "parquet":
        assert shards.classes == ref.classes == ["n00", "n01"]
    for i in range(len(ref)):
        a, b = ref[i], shards[i]
        if a[0] is None:  # the corrupt file: unreadable from both, reported by name
            assert b[0] is None and "img5_broken" in shards.items[i][0]
            continue
        assert np.array_equal(np.asarray(ref.load_rgb(i)), np.asarray(shards.load_rgb(i)))
        assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    aug_ref, aug = AugmentedImageFolder(sources["folder"], 32, seed=3), AugmentedImageFolder(sources[kind], 32, seed=3)
    keys = [(i, e) for e in range(2) for i in range(len(ref))]
    x_ref, y_ref, i_ref, skipped_ref = collate_samples([aug_ref[k] for k in keys])
    x, y, idx, skipped = collate_samples([aug[k] for k in keys])
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref) and torch.equal(idx, i_ref)
    assert len(skipped) == len(skipped_ref) == 2 and all("img5_broken" in s for s in skipped)


def test_hf_names_go_through_load_dataset(monkeypatch, sources):
    import datasets

    calls = []
    real = datasets.load_dataset

    def fake(name, split=None, cache_dir=None, **kwargs):
        calls.append((name, split))
        return real("parquet", data_files={"train": shard_files(sources["parquet"])[1]}, split="train",
                    cache_dir=cache_dir)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    source = ShardSource("hf://ILSVRC/imagenet-1k:validation")
    assert calls == [("ILSVRC/imagenet-1k", "validation")] and len(source) == 10
    ShardSource(Path("hf://datasets/timm/imagenet-1k-wds"))  # a name that went through pathlib
    assert calls[-1] == ("timm/imagenet-1k-wds", "train")


def test_extraction_reconstruction_and_val_npz_from_shards(sources, tmp_path, single_thread):
    from autoregressive.extract_codes import code_dirs
    from autoregressive.extract_codes import main as extract
    from evaluations.make_val_npz import build
    from tokenizer import build_tokenizer
    from tokenizer.reconstruct import main as reconstruct
    from utils.checkpoint import save_atomic

    torch.manual_seed(5)
    ckpt = save_atomic({"model": build_tokenizer(TINY).state_dict()}, tmp_path / "tok.pt")
    common = ["--image-size", "32", "--model-config", str(TINY), "--vq-ckpt", str(ckpt), "--device", "cpu",
              "--num-workers", "0"]
    for name in ("folder", "tar"):
        extract(["--data-path", str(sources[name]), "--code-path", str(tmp_path / f"codes_{name}"), *common])
    dirs = [code_dirs(tmp_path / f"codes_{name}", "imagenet", 32)[0] for name in ("folder", "tar")]
    files = sorted(p.name for p in dirs[0].glob("*.npy"))
    assert len(files) == 9 and files == sorted(p.name for p in dirs[1].glob("*.npy"))
    assert all(np.array_equal(np.load(dirs[0] / f), np.load(dirs[1] / f)) for f in files)
    metrics = {}
    for name in ("folder", "parquet"):
        metrics[name] = reconstruct(["--data-path", str(sources[name]), "--sample-dir", str(tmp_path / "rec"),
                                     "--run-name", name, "--per-proc-batch-size", "4", *common])
    assert metrics["folder"]["psnr"] == metrics["parquet"]["psnr"] and metrics["parquet"]["num_images"] == 9
    assert np.array_equal(np.load(tmp_path / "rec" / "folder" / "folder.npz")["arr_0"],
                          np.load(tmp_path / "rec" / "parquet" / "parquet.npz")["arr_0"])
    # the val npz needs readable images (ImageNet val is clean): the first three
    folder_npz = build(sources["folder"], image_size=32, workers=0, max_images=3)
    tar_npz = build(sources["tar"], image_size=32, workers=0, max_images=3, png_dir=tmp_path / "png")
    assert np.array_equal(folder_npz, tar_npz) and len(list((tmp_path / "png").rglob("*.png"))) == 3


def test_tokenizer_training_from_shards_matches_the_folder(sources, tmp_path):
    from tokenizer.train import main as train
    from utils.checkpoint import load_checkpoint_file

    micro = ["model.init_args.encoder_size=micro", "model.init_args.decoder_size=micro", "model.init_args.cnn_ch=32",
             "model.init_args.z_channels=32", "model.init_args.codebook_size=256", "loss.params.disc_dim=16"]
    for name in ("folder", "tar"):
        with threads(1):
            train(["--data-path", str(sources[name]), "--model-config", str(TINY), "--save-path", str(tmp_path),
                   "--exp-name", name, "--iterations", "2", "--global-batch-size", "4", "--num-workers", "0",
                   "--mixed-precision", "none", "--device", "cpu", "--log-every", "1", "--random-loss-nets",
                   "--no-progress", "--ckpt-every", "2", "--config-overrides", *micro])
    a, b = (load_checkpoint_file(next((tmp_path / n).rglob("0000002.pt"))) for n in ("folder", "tar"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert json.loads(next((tmp_path / "tar").rglob("args.json")).read_text())["data_path"] == str(sources["tar"])
