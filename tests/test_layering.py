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


def imported_modules(path) -> set[str]:
    """Every module an import in the file names, with its imported names as submodules (``from utils import
    cpu_kernels`` gives utils and utils.cpu_kernels; a relative import keeps its leading dots)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.add(base)
            found |= {base + ("." if node.module else "") + alias.name for alias in node.names}
    return found


SPEED_LAYER = ("utils.cpu_kernels", "contextvars", "autoregressive.models.fast_decode", ".fast_decode")


def test_the_gpt_model_file_imports_nothing_of_the_speed_layer():
    names = imported_modules(REPO / "autoregressive/models/gpt.py")
    bad = sorted(n for n in names if any(n == s or n.startswith(s + ".") for s in SPEED_LAYER))
    assert not bad, bad


def test_imported_modules_sees_names_and_relative_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("import contextvars\nfrom utils import cpu_kernels\nfrom .fast_decode import accelerate\n")
    assert imported_modules(sample) == {"contextvars", "utils", "utils.cpu_kernels", ".fast_decode",
                                        ".fast_decode.accelerate"}
