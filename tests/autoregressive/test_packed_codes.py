"""Packed codes (extract_codes --format packed, autoregressive.packed_codes, convert_codes): the same values as the
per-image files, resume after a kill redoes only unfinished ranges, the converter round-trips, the GPT trains to
bit-identical weights from either layout (also across a resume), val_loss gives the same number, and the bytes on
disk shrink at least 4x against int64 files for a 16384-entry codebook."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from autoregressive import packed_codes
from autoregressive.convert_codes import main as convert
from autoregressive.data import open_train_codes
from autoregressive.extract_codes import code_dirs
from autoregressive.extract_codes import main as extract
from autoregressive.packed_codes import PackedCodes, code_dtype, packed_dir, read_index
from autoregressive.train_c2i import main as train_main
from utils.checkpoint import load_checkpoint_file
from utils.data import CodeDataset

from test_train_c2i import TINY_TOK, make_ar_data, train_args
from testlib import REPO, child_env, make_images, threads, torchrun


@pytest.fixture(scope="module")
def ar_data(tmp_path_factory):
    with threads(1):
        data = make_ar_data(tmp_path_factory.mktemp("packed_ar"), train_per_class=4, val_per_class=2)
        packed_root = data["train_codes"].parent / "train_packed"
        convert(["--code-path", str(data["train_codes"]), "--out-path", str(packed_root), "--image-size", "32",
                 "--to", "packed", "--chunk-size", "5"])
        (packed_root / "extract_settings.json").write_text((data["train_codes"] / "extract_settings.json").read_text())
        data["train_packed"] = packed_root
        yield data


def _extract_args(images: Path, codes: Path, ckpt: Path, *extra: str) -> list[str]:
    return ["--data-path", str(images), "--code-path", str(codes), "--image-size", "32", "--model-config",
            str(TINY_TOK), "--vq-ckpt", str(ckpt), "--device", "cpu", "--num-workers", "0", "--batch-size", "3",
            *extra]


def test_dtype_is_the_smallest_signed_type():
    assert code_dtype(128) == np.int8 and code_dtype(129) == np.int16 and code_dtype(16384) == np.int16
    assert code_dtype(32768) == np.int16 and code_dtype(32769) == np.int32 and code_dtype(2 ** 31 + 1) == np.int64


def test_packed_extraction_equals_per_image_files(tmp_path, ar_data, single_thread):
    images = make_images(tmp_path / "img", n=7)
    (images / "class1" / "broken.png").write_bytes(b"not an image")  # sorted after img01.png: index 4
    common = ("--ten-crop", "--chunk-size", "2")
    extract(_extract_args(images, tmp_path / "per", ar_data["tok_ckpt"], *common))
    summary = extract(_extract_args(images, tmp_path / "pk", ar_data["tok_ckpt"], "--format", "packed", *common))
    folder = packed_dir(tmp_path / "pk", "imagenet", 32)
    index = read_index(folder)
    assert index["complete"] and index["images"] == 8 and index["valid"] == 7 and index["skipped"] == [4]
    assert index["dtype"] == "int16" and index["vq_ckpt_sha256"] == summary["vq_ckpt_sha256"]
    assert index["ten_crop"] and index["crop_range"] == 1.1 and index["views"] == 10 and index["tokens"] == 64
    codes = np.load(folder / "codes.npy", mmap_mode="r")
    assert codes.shape == (8, 10, 64) and codes.dtype == np.int16
    per, packed = CodeDataset(*code_dirs(tmp_path / "per", "imagenet", 32)), PackedCodes(folder)
    assert list(packed.ids) == per.ids and len(per) == 7
    codes_dir, _ = code_dirs(tmp_path / "per", "imagenet", 32)
    for k, i in enumerate(per.ids):
        assert np.array_equal(np.load(codes_dir / f"{i}.npy"), codes[i])
        torch.manual_seed(k)
        a = per[k]
        torch.manual_seed(k)
        b = packed[k]
        assert torch.equal(a[0], b[0]) and a[0].dtype == b[0].dtype == torch.int64 and a[1] == b[1]


def test_resume_after_a_failure_redoes_only_unfinished_ranges(tmp_path, ar_data, monkeypatch, single_thread):
    images = make_images(tmp_path / "img", n=9)
    args = _extract_args(images, tmp_path / "codes", ar_data["tok_ckpt"], "--format", "packed", "--chunk-size", "2")
    extract(_extract_args(images, tmp_path / "ref", ar_data["tok_ckpt"], "--format", "packed", "--chunk-size", "2"))
    writes: list[int] = []
    original = packed_codes.PackedWriter.write_chunk

    def dying(self, start, codes, labels):
        if len(writes) == 2:
            raise KeyboardInterrupt  # as if killed after two ranges
        writes.append(start)
        original(self, start, codes, labels)

    monkeypatch.setattr(packed_codes.PackedWriter, "write_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        extract(args)
    folder = packed_dir(tmp_path / "codes", "imagenet", 32)
    assert not read_index(folder)["complete"] and writes == [0, 2]
    with pytest.raises(FileNotFoundError, match="incomplete"):
        PackedCodes(folder)
    writes.clear()
    monkeypatch.setattr(packed_codes.PackedWriter, "write_chunk", lambda self, *a: (writes.append(a[0]),
                                                                                    original(self, *a)))
    summary = extract([*args, "--resume"])
    assert writes == [4, 6, 8] and summary["written_by_rank0"] == 5  # ranges [0, 2) and [2, 4) were not redone
    ref = packed_dir(tmp_path / "ref", "imagenet", 32)
    for name in ("codes.npy", "labels.npy"):
        assert (folder / name).read_bytes() == (ref / name).read_bytes()
    with pytest.raises(ValueError, match="chunk_size"):
        extract([*args[:-2], "--chunk-size", "3", "--resume"])


@pytest.mark.slow
def test_sigkill_during_extraction_then_resume(tmp_path, ar_data):
    """A real SIGKILL in a child process (its encoder slowed so the kill lands mid-way); the resume keeps every range
    whose marker exists (marker files untouched) and the result equals an uninterrupted extraction."""
    images = make_images(tmp_path / "img", n=12)
    args = _extract_args(images, tmp_path / "codes", ar_data["tok_ckpt"], "--format", "packed", "--chunk-size", "2",
                         "--batch-size", "1")
    slow = ("import sys, time\n"
            "import autoregressive.extract_codes as e\n"
            "make = e._encoder\n"
            "def slowed(*a):\n"
            "    encode = make(*a)\n"
            "    def run(x):\n"
            "        time.sleep(0.4)\n"
            "        return encode(x)\n"
            "    return run\n"
            "e._encoder = slowed\n"
            "e.main(sys.argv[1:])\n")
    proc = subprocess.Popen([sys.executable, "-c", slow, *args], cwd=REPO, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = packed_dir(tmp_path / "codes", "imagenet", 32)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((folder / "chunks").glob("*.done")) if folder.exists() else []) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in (folder / "chunks").glob("*.done")}
    assert 2 <= len(done) < 6 and not read_index(folder)["complete"]
    with threads(1):
        summary = extract([*args, "--resume"])
        extract(_extract_args(images, tmp_path / "ref", ar_data["tok_ckpt"], "--format", "packed"))
    assert summary["written_by_rank0"] == 12 - 2 * len(done)
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "chunks").glob("*.done") if p.name in done} == done
    ref = packed_dir(tmp_path / "ref", "imagenet", 32)
    for name in ("codes.npy", "labels.npy"):
        assert np.array_equal(np.load(folder / name), np.load(ref / name))


@pytest.mark.slow
def test_two_ranks_write_the_same_packed_codes_as_one(tmp_path, ar_data):
    """Two torchrun processes write disjoint ranges of one array (no gather); the bytes equal a one-process run."""
    images = make_images(tmp_path / "img", n=11)
    torchrun("autoregressive.extract_codes",
             _extract_args(images, tmp_path / "two", ar_data["tok_ckpt"], "--format", "packed", "--chunk-size", "2"))
    with threads(1):
        extract(_extract_args(images, tmp_path / "one", ar_data["tok_ckpt"], "--format", "packed"))
    two, one = packed_dir(tmp_path / "two", "imagenet", 32), packed_dir(tmp_path / "one", "imagenet", 32)
    assert read_index(two)["complete"] and read_index(two)["valid"] == 11
    for name in ("codes.npy", "labels.npy"):
        assert (two / name).read_bytes() == (one / name).read_bytes()


def test_converter_round_trips(tmp_path, ar_data):
    back = tmp_path / "back"
    convert(["--code-path", str(ar_data["train_packed"]), "--out-path", str(back), "--image-size", "32",
             "--to", "per-image"])
    src_codes, src_labels = code_dirs(ar_data["train_codes"], "imagenet", 32)
    out_codes, out_labels = code_dirs(back, "imagenet", 32)
    names = sorted(p.name for p in src_codes.glob("*.npy"))
    assert names == sorted(p.name for p in out_codes.glob("*.npy")) and len(names) == 16
    for name in names:
        a, b = np.load(src_codes / name), np.load(out_codes / name)
        assert a.dtype == b.dtype == np.int64 and np.array_equal(a, b)
        assert np.load(src_labels / name) == np.load(out_labels / name)
    assert json.loads((back / "extract_settings.json").read_text())["codebook_size"] == 1024
    index = read_index(packed_dir(ar_data["train_packed"], "imagenet", 32))
    assert index["dtype"] == "int16" and index["vq_ckpt_sha256"] and index["valid"] == 16


def test_gpt_trains_to_identical_weights_from_packed_codes_and_resumes_exactly(tmp_path, ar_data, single_thread):
    assert open_train_codes(ar_data["train_packed"], "imagenet", 32).packed
    assert not open_train_codes(ar_data["train_codes"], "imagenet", 32).packed
    extra = ("--ckpt-every", "2", "--mixed-precision", "none", "--ema", "--global-batch-size", "4")
    train_main(train_args(ar_data, tmp_path, "per_image", 4, *extra))
    packed = {**ar_data, "train_codes": ar_data["train_packed"]}
    train_main(train_args(packed, tmp_path, "packed", 4, *extra, "--early-stop-iter", "2"))
    train_main(train_args(packed, tmp_path, "packed", 4, *extra))  # resumes at step 2
    assert (tmp_path / "packed" / "resumes.jsonl").is_file()
    a = load_checkpoint_file(tmp_path / "per_image" / "checkpoints" / "0000004.pt")
    b = load_checkpoint_file(tmp_path / "packed" / "checkpoints" / "0000004.pt")
    for entry in ("model", "ema"):
        assert a[entry].keys() == b[entry].keys()
        assert all(torch.equal(a[entry][k], b[entry][k]) for k in a[entry]), entry


def test_val_loss_reads_packed_codes(tmp_path, ar_data):
    from autoregressive.val_loss import main as val_main
    from utils.checkpoint import save_atomic

    from testlib import tiny_gpt

    model = tiny_gpt(seed=1, vocab_size=1024, block_size=64, num_classes=4)
    ckpt = save_atomic({"model": model.state_dict(), "steps": 1, "args": {"gpt_model": "GPT-tiny"},
                        "gpt_config": {"gpt_model": "GPT-tiny", "vocab_size": 1024, "block_size": 64,
                                       "num_classes": 4}}, tmp_path / "run" / "checkpoints" / "0000001.pt")
    common = ["--gpt-ckpt", str(ckpt), "--tok-config", str(TINY_TOK), "--device", "cpu", "--num-workers", "0",
              "--precision", "none", "--per-proc-batch-size", "5", "--no-txt", "--view", "1"]
    per = val_main([*common, "--code-path", str(ar_data["train_codes"]), "--out-json", str(tmp_path / "a.json")])
    packed = val_main([*common, "--code-path", str(ar_data["train_packed"]), "--out-json", str(tmp_path / "b.json")])
    assert per["val_loss"] == packed["val_loss"] and per["num_images"] == packed["num_images"] == 16


def test_bytes_on_disk_for_a_16384_codebook(tmp_path):
    """ImageNet-like rows (10 views x 256 tokens, ids < 16384): packed int16 vs the original's int64 file pairs."""
    from benchmarks.bench_data import code_bytes

    result = code_bytes(tmp_path, n=64, views=10, tokens=256, codebook_size=16384)
    assert result["packed_dtype"] == "int16"
    assert result["per_image_bytes"] / result["packed_bytes"] >= 4.0
    assert result["per_image_disk"] / result["packed_disk"] >= 4.0
