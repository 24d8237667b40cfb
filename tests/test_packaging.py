"""The installed wheel works outside the checkout: it ships the tokenizer YAMLs (package tokenizer.vq_configs, mapped
to configs/vq), so released models load by name from a folder that has no configs/ beside it."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from testlib import REPO

SOURCES = ["utils", "tokenizer", "autoregressive", "evaluations", "configs/vq", "pyproject.toml", "README.md",
           "LICENSE"]


def _declared_packages() -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def test_declared_packages_match_the_source_tree():
    """pyproject.toml lists the packages (to map one more); a package added to the tree must be listed too."""
    tops = ("utils", "tokenizer", "autoregressive", "evaluations")
    inits = [p for top in tops for p in (REPO / top).rglob("__init__.py")]
    found = {str(p.parent.relative_to(REPO)).replace(os.sep, ".") for p in inits}
    assert sorted(_declared_packages()) == sorted(found | {"tokenizer.vq_configs"})


def stand_in_checkpoint(model_sd: dict, path: Path) -> Path:
    """A checkpoint with every tensor of the right shape and dtype but one stored element each (expanded views), so
    that a full-size released model loads from a file of a few kilobytes."""
    torch.save({"model": {k: torch.full((), 0.25 if v.is_floating_point() else 0, dtype=v.dtype).expand(v.shape)
                          for k, v in model_sd.items()}}, path)
    return path


def offline_cache(root: Path, files: dict[str, Path]) -> Path:
    """A Hugging Face Hub cache holding ``files`` in the released repository (read with HF_HUB_OFFLINE=1)."""
    repo_dir = root / "models--YuuTennYi--GigaTok"
    commit = hashlib.sha1(b"gigatok-wheel-test").hexdigest()
    (repo_dir / "snapshots" / commit).mkdir(parents=True)
    for name, src in files.items():
        shutil.copy(src, repo_dir / "snapshots" / commit / name)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return root


@pytest.mark.slow
def test_wheel_loads_released_models_outside_the_checkout(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools")
    from autoregressive import build_gpt
    from tokenizer import build_tokenizer

    src = tmp_path / "src"  # build from a copy: the checkout gets no build/ or egg-info
    for item in SOURCES:
        (shutil.copytree if (REPO / item).is_dir() else shutil.copy)(
            REPO / item, src / item, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (REPO / item).is_dir() else {}))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("gigatok_pytorch-*.whl"))
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=600)
    assert (site / "tokenizer" / "vq_configs" / "VQ_SS256.yaml").is_file()
    assert (site / "autoregressive" / "demo" / "examples" / "photos" / "chelsea.png").is_file()
    assert (site / "utils" / "fashion_mnist_data" / "fashion_mnist_subset.npz").is_file()

    with torch.device("meta"):
        tok_sd = build_tokenizer(REPO / "configs" / "vq" / "VQ_SS256.yaml").state_dict()
        gpt_sd = build_gpt("GPT-B", vocab_size=16384, block_size=256, num_classes=1000).state_dict()
    cache = offline_cache(tmp_path / "hub", {
        "VQ_SS256_e100.pt": stand_in_checkpoint(tok_sd, tmp_path / "tok.pt"),
        "GPT_B256_e300_VQ_SS.pt": stand_in_checkpoint(gpt_sd, tmp_path / "gpt.pt")})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = textwrap.dedent(f"""
        import tokenizer
        from autoregressive import load_gpt
        from tokenizer import config_path, load_tokenizer
        assert tokenizer.__file__.startswith({str(site)!r}), tokenizer.__file__
        assert str(config_path("VQ_SS256")).startswith({str(site)!r}), config_path("VQ_SS256")
        tok = load_tokenizer("VQ_SS256")
        assert tok.codebook_size == 16384 and float(tok.quant_conv.weight[0, 0, 0, 0]) == 0.25
        gpt = load_gpt("GPT-B_VQ_SS")
        assert gpt.vocab_size == 16384 and float(gpt.tok_embeddings.weight[0, 0]) == 0.25
        print("LOADED-OK")
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HOME")}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="", PYTHONSAFEPATH="1")
    proc = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "LOADED-OK" in proc.stdout, proc.stderr[-3000:]


def test_the_distribution_name_is_not_the_unrelated_pypi_project():
    """``gigatok`` on PyPI is someone else's text tokenizer: this project installs as ``gigatok-pytorch``, and its
    runtime data (demo photos, the quickstart's Fashion-MNIST subset) lives in the packages, not under tests/."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["name"] == "gigatok-pytorch"
    data = project["tool"]["setuptools"]["package-data"]
    assert "examples/photos/*.png" in data["autoregressive.demo"] and "fashion_mnist_data/*" in data["utils"]
    import autoregressive.demo.models as demo_models
    from utils import fashion_mnist
    assert demo_models.PHOTOS.is_dir() and fashion_mnist.SUBSET.is_file()
    assert "tests" not in demo_models.PHOTOS.parts and "tests" not in fashion_mnist.SUBSET.parts
