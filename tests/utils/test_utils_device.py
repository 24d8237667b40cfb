"""--device auto: CUDA, then Apple MPS, then the CPU, announced once per process."""
from __future__ import annotations

import pytest
import torch

from utils import distributed


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(distributed, "_announced", set())
    monkeypatch.delenv("RANK", raising=False)


def test_auto_prefers_mps_over_cpu_and_says_so(fresh, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(distributed, "mps_available", lambda: True)
    assert distributed.pick_device("auto") == torch.device("mps")
    assert "--device auto: running on mps (Apple MPS" in capsys.readouterr().err


def test_auto_falls_back_to_cpu_once(fresh, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(distributed, "mps_available", lambda: False)
    assert distributed.pick_device(None) == torch.device("cpu")
    assert distributed.pick_device("auto") == torch.device("cpu")
    assert capsys.readouterr().err.count("--device auto: running on cpu (no CUDA or MPS device)") == 1
    assert distributed.pick_device("cpu") == torch.device("cpu") and capsys.readouterr().err == ""


def test_unavailable_devices_are_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(distributed, "mps_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        distributed.pick_device("cuda")
    with pytest.raises(RuntimeError, match="MPS backend is not available"):
        distributed.pick_device("mps")
