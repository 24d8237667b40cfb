"""Shared test helpers (import as ``from testlib import ...``): repo paths, ../shared, seeded weights.

Kept out of conftest.py because several conftest modules exist and importing from ``conftest`` would be ambiguous.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GIGATOK_SHARED", REPO.parent / "shared"))
PHOTOS = REPO / "tests" / "data" / "photos"
CONFIGS = REPO / "configs" / "vq"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the tests need the project's shared/ folder beside the repo "
                                "(or GIGATOK_SHARED pointing at it)")
    return path


def seeded_state_dict(template: dict, seed: int = 0) -> dict:
    """The parity vectors' deterministic weights (../shared/parity/seeded_weights.py)."""
    spec = importlib.util.spec_from_file_location("seeded_weights", shared_path("parity", "seeded_weights.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.seeded_state_dict(template, seed=seed)
