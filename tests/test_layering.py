"""The floors of the package (utils < evaluations < tokenizer < autoregressive < benchmarks): no module imports
from a floor above its own, also not lazily inside a function, so each floor can be used and tested without the
ones above it. And the GPT's model file is architecture only: its speed layer is imported by the entry points, never
by the model."""
from __future__ import annotations

import ast

import pytest

from testlib import REPO

FLOORS = ["utils", "evaluations", "tokenizer", "autoregressive", "benchmarks"]


def imported_packages(path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in the file, wherever it sits."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("floor", FLOORS[:-1])
def test_no_module_imports_from_a_higher_floor(floor):
    higher = set(FLOORS[FLOORS.index(floor) + 1:])
    files = sorted((REPO / floor).rglob("*.py"))
    assert files
    bad = [f"{path.relative_to(REPO)}:{line} imports {package}" for path in files
           for line, package in imported_packages(path) if package in higher]
    assert not bad, "\n".join(bad)


def test_the_check_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("import os\n\ndef f():\n    from autoregressive.loading import build_gpt\n    import tokenizer\n")
    assert imported_packages(sample) == [(1, "os"), (4, "autoregressive"), (5, "tokenizer")]


# The model files hold the architecture and the plain forward only; the speed layer swaps itself in from outside.
ARCHITECTURE_ONLY = ["tokenizer/models/cnn.py", "tokenizer/models/vit.py", "tokenizer/models/quantizer.py",
                     "tokenizer/models/vq_model.py", "autoregressive/models/gpt.py"]
SPEED_LAYER = {"tokenizer.models.accelerate", "autoregressive.models.fast_decode", "utils.cpu_kernels", "contextvars"}


def imported_modules(path, package: str) -> set[str]:
    """Every module the file names in an import (``from a import b``: ``a`` and ``a.b``), relative ones resolved
    against ``package``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("name", ARCHITECTURE_ONLY)
def test_model_files_do_not_import_the_speed_layer(name):
    path = REPO / name
    package = ".".join(path.relative_to(REPO).parent.parts)
    assert not imported_modules(path, package) & SPEED_LAYER


def test_the_speed_check_resolves_relative_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("from . import accelerate\nfrom utils import cpu_kernels\nfrom ..models.cnn import Encoder\n")
    assert imported_modules(sample, "tokenizer.models") >= {"tokenizer.models.accelerate", "utils.cpu_kernels",
                                                            "tokenizer.models.cnn.Encoder"}
