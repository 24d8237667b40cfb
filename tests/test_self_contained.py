"""The repository is self-contained: no code or script refers to a folder beside the checkout (a user's clone has
nothing there), and every test input the tests name exists inside the repo."""
from __future__ import annotations

import re

from testlib import MANIFESTS, PARITY, REPO

SCANNED = ("tokenizer", "autoregressive", "evaluations", "utils", "scripts", "tests", "benchmarks", ".ci")
# spelled in pieces so that this file does not match itself
OUTSIDE = re.compile("|".join([r"\.\./" + "shared", "GIGATOK_" + "SHARED", r"parent\s*/\s*['\"]" + "shared"]))


def test_no_file_refers_to_a_folder_beside_the_repo():
    offenders = []
    for top in SCANNED:
        for path in (REPO / top).rglob("*"):
            if path.suffix in {".py", ".sh", ".toml", ".yaml", ".cfg", ""} and path.is_file():
                text = path.read_text(errors="ignore")
                offenders += [f"{path.relative_to(REPO)}:{n}" for n, line in enumerate(text.splitlines(), 1)
                              if OUTSIDE.search(line)]
    assert offenders == []


def test_parity_vectors_and_manifests_are_shipped():
    assert {p.name for p in PARITY.glob("*.pt")} == {
        "VQ_SS256_seed0.pt", "VQ_SS256_2d_seed0.pt", "VQ_SB256_seed1.pt", "VQ_SB256_2d_seed1.pt",
        "VQ_BL256_train_new_seed1.pt", "VQ_BL256_2d_seed1.pt", "GPT-B_seed0.pt", "GPT-B_2d_seed0.pt"}
    assert len(list(MANIFESTS.glob("tok_*.json"))) == 9 and len(list(MANIFESTS.glob("gpt_*.json"))) == 3
    size = sum(p.stat().st_size for p in (REPO / "tests" / "data").rglob("*") if p.is_file())
    assert size < 20 * 2**20, f"test data is {size / 2**20:.1f} MiB"
