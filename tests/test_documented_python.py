"""Every ```python block of README.md and Detailed_instructions.md runs as written, on CPU and offline.

The only changes, listed in SUBSTITUTIONS: a released model's name becomes the save_pretrained folder of a tiny
seeded model of the same kind (a released tokenizer -> VQ_tiny32_2d, a released GPT -> GPT-tiny over its codes with
1000 classes), so the blocks load, encode, sample and decode in seconds. ``push_to_hub`` talks to a local stand-in
of the Hub (testlib.stand_in_hub) and the blocks run in a temporary folder (what they save lands there).
"""
from __future__ import annotations

import re

import pytest
import torch

from testlib import CONFIGS, REPO, stand_in_hub, tiny_gpt

DOCS = ["README.md", "Detailed_instructions.md"]
TOKENIZERS = ["VQ_XLXXL256", "VQ_SS256"]  # released names the blocks load -> the tiny tokenizer folder
GPTS = ["GPT-B_VQ_XLXXL", "GPT-B_VQ_SS"]  # -> the tiny GPT folder


def python_blocks() -> list[tuple[str, int, str]]:
    found = []
    for doc in DOCS:
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", (REPO / doc).read_text(), re.S)):
            found.append((doc, i, block))
    return found


BLOCKS = python_blocks()


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory) -> dict[str, str]:
    from tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    tok = build_tokenizer(CONFIGS / "VQ_tiny32_2d.yaml").eval()
    gpt = tiny_gpt(seed=0, vocab_size=tok.codebook_size, block_size=tok.num_tokens, num_classes=1000)
    return {"tok": str(tok.save_pretrained(root / "tok")), "gpt": str(gpt.save_pretrained(root / "gpt"))}


def substitutions(folders: dict[str, str]) -> dict[str, str]:
    subs = {f'"{name}"': f'"{folders["tok"]}"' for name in TOKENIZERS}
    subs.update({f'"{name}"': f'"{folders["gpt"]}"' for name in GPTS})
    return subs


def test_the_docs_have_python_blocks_and_every_substitution_is_used():
    assert len(BLOCKS) >= 3
    text = "".join(block for _, _, block in BLOCKS)
    for name in TOKENIZERS + GPTS:
        assert f'"{name}"' in text, f"{name} is no longer in a python block: drop it from the substitutions"


@pytest.mark.parametrize("doc,index,block", BLOCKS, ids=[f"{d}:{i}" for d, i, _ in BLOCKS])
def test_documented_python_runs(doc, index, block, tiny_folders, tmp_path, monkeypatch, single_thread):
    monkeypatch.chdir(tmp_path)
    stand_in_hub(monkeypatch, tmp_path / "hub")
    code = block
    for old, new in substitutions(tiny_folders).items():
        code = code.replace(old, new)
    exec(compile(code, f"{doc} python block {index}", "exec"), {"__name__": "__doc_block__"})  # noqa: S102
