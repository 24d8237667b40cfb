"""Fixtures for every test; helpers live in testlib.py (which puts the repo root and tests/ on sys.path)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from testlib import single_thread  # noqa: E402,F401  (fixture available to every test module)


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    """Seed every test and restore global torch state a test (or a driver it calls in-process) may change."""
    torch.manual_seed(0)
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    yield
    torch.set_grad_enabled(grad)
    torch.set_num_threads(threads)
