"""Test helpers in one place (import as ``from testlib import ...``): repo paths, test data, seeded weights, small
image folders, tiny GPTs, thread limits and torchrun launches.

Kept out of conftest.py because several conftest modules exist and importing from ``conftest`` would be ambiguous.
Everything a test reads lives inside the repository (tests/data); nothing outside it is consulted.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
PARITY = DATA / "parity"
MANIFESTS = DATA / "manifests"
PHOTOS = REPO / "autoregressive" / "demo" / "examples"  # an ImageFolder root: its class "photos"
CONFIGS = REPO / "configs" / "vq"

for _path in (REPO, REPO / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from seeded_weights import seeded_state_dict  # noqa: E402  (re-exported: the parity vectors' weights)

__all__ = ["CONFIGS", "DATA", "MANIFESTS", "PARITY", "PHOTOS", "REPO", "TINY_GPT", "child_env", "free_port",
           "make_class_images", "make_images",
           "make_quickstart_models", "seeded_state_dict", "single_thread", "stand_in_hub", "threads",
           "tiny_gpt", "torchrun", "torchrun_cmd"]


# ----- threads -------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` threads inside the block (tiny models are faster on one, and leave the cores to others)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One torch thread for the test (registered for every test module by tests/conftest.py)."""
    with threads(1):
        yield


# ----- subprocesses and torchrun -------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict:
    """Environment for a child process: the repo importable, one thread per process, no GPU."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # keeps a site dir given there
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "CUDA_VISIBLE_DEVICES": "", **extra}


def torchrun_cmd(entry: str | Path, args: Sequence[str], nproc: int = 2) -> list[str]:
    """A torchrun command line; ``entry`` is a module name (``tokenizer.train``) or a script path."""
    target = [str(entry)] if str(entry).endswith(".py") else ["-m", str(entry)]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", *target, *map(str, args)]


def torchrun(entry: str | Path, args: Sequence[str], nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``entry`` under torchrun from the repo root and fail the test with the output's tail if it fails."""
    proc = subprocess.run(torchrun_cmd(entry, args, nproc), cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


# ----- small image folders -------------------------------------------------------------------------------------------

def make_images(root: Path, n: int = 16, seed: int = 0) -> Path:
    """``n`` small RGB images in two classes: gradients with a coloured disc (sizes vary, all >= 36 px)."""
    rng = np.random.RandomState(seed)
    for i in range(n):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = 36 + rng.randint(0, 20), 36 + rng.randint(0, 20)
        yy, xx = np.mgrid[0:h, 0:w]
        col = rng.randint(0, 256, 3)
        img = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, col[2])], -1).astype(np.uint8)
        cx, cy, r = rng.randint(8, w - 8), rng.randint(8, h - 8), rng.randint(4, 9)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = col
        Image.fromarray(img).save(folder / f"img{i:02d}.png")
    return root


CLASS_PALETTE = np.array([[220, 40, 40], [40, 200, 60], [50, 70, 230], [230, 210, 40]])


def make_class_images(root: Path, per_class: int, seed: int) -> Path:
    """Four learnable classes (ImageNet-style folder names): class c has a class colour, a bright square in a
    class-specific quadrant and noise; random sizes >= 36 px."""
    rng = np.random.default_rng(seed)
    for c, colour in enumerate(CLASS_PALETTE):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = 36 + int(rng.integers(0, 8)), 36 + int(rng.integers(0, 8))
            img = np.empty((h, w, 3), np.float64)
            img[:] = colour * 0.6
            y0, x0 = (c // 2) * h // 2, (c % 2) * w // 2
            img[y0: y0 + h // 2, x0: x0 + w // 2] = 255 - colour * 0.3
            img += rng.normal(0, 12, img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img{i:02d}.png")
    return root


# ----- tiny GPTs -----------------------------------------------------------------------------------------------------

TINY_GPT = dict(vocab_size=64, block_size=16, num_classes=10)


def tiny_gpt(seed: int = 0, **overrides) -> torch.nn.Module:
    """A 2-layer GPT with random (non-zero) weights everywhere, in eval mode."""
    from autoregressive.models.gpt import GPT_models

    model = GPT_models["GPT-tiny"](**{**TINY_GPT, **overrides})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
        model.output.weight.mul_(4.0)  # sharper logits, so sampling is not close to uniform
    return model.eval()


def make_quickstart_models(root: Path, seed: int = 0) -> Path:
    """A folder laid out as ``scripts/quickstart.sh`` leaves it (tokenizer and GPT checkpoints in the trainers'
    format, class names), with seeded untrained models: what the demo needs, in a second instead of 6 minutes."""
    import shutil

    from tokenizer import build_tokenizer, tokenizer_info
    from utils.checkpoint import save_atomic
    from utils.config import to_plain

    config = CONFIGS / "VQ_tiny32_2d.yaml"
    tok_dir = root / "tokenizer" / "VQ_tiny32_2d"
    (tok_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(config, tok_dir / "config.yaml")
    torch.manual_seed(seed)
    tok = build_tokenizer(config)
    save_atomic({"model": tok.state_dict(), "config": to_plain(tok.source_config), "steps": 2},
                tok_dir / "checkpoints" / "0000002.pt")
    info = tokenizer_info(config)
    gpt_config = {"gpt_model": "GPT-tiny", "vocab_size": info["codebook_size"], "block_size": info["num_tokens"],
                  "num_classes": 10, "cls_token_num": 1, "class_dropout_prob": 0.1, "use_qk_norm": False,
                  "gpt_2d": False}
    gpt_dir = root / "gpt" / "GPT-tiny"
    (gpt_dir / "checkpoints").mkdir(parents=True)
    gpt = tiny_gpt(seed, **{k: v for k, v in gpt_config.items() if k != "gpt_model"})
    save_atomic({"model": gpt.state_dict(), "gpt_config": gpt_config, "steps": 3},
                gpt_dir / "checkpoints" / "0000003.pt")
    (gpt_dir / "vq_ckpt.txt").write_text(str(tok_dir / "checkpoints" / "0000002.pt"))
    (root / "data").mkdir(parents=True)
    (root / "data" / "class_names.txt").write_text("".join(f"{n}\n" for n in [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]))
    return root


# ----- the Hugging Face Hub without network -------------------------------------------------------------------------

def stand_in_hub(monkeypatch, cache: Path) -> list:
    """huggingface_hub.HfApi replaced by a stand-in whose upload_folder files the folder into an offline Hub cache
    (as a download would have), so hf://OWNER/REPO then loads from it with HF_HUB_OFFLINE=1."""
    import hashlib
    import shutil

    import huggingface_hub
    import huggingface_hub.constants as hf_constants

    calls = []

    class StandInApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
            calls.append(("create_repo", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, repo_type=None, commit_message=None):
            commit = hashlib.sha1(repo_id.encode()).hexdigest()
            repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
            shutil.copytree(folder_path, repo_dir / "snapshots" / commit)
            (repo_dir / "refs").mkdir(parents=True)
            (repo_dir / "refs" / "main").write_text(commit)
            calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return f"https://huggingface.co/{repo_id}/commit/{commit}"

    monkeypatch.setattr(huggingface_hub, "HfApi", StandInApi)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return calls
