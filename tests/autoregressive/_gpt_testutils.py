"""Helpers shared by the GPT tests (a plain module: tests/conftest.py owns the `conftest` name)."""
from __future__ import annotations

import pytest
import torch

from autoregressive.models.gpt import GPT_models

TINY = dict(vocab_size=64, block_size=16, num_classes=10)


def tiny_gpt(seed: int = 0, **overrides) -> torch.nn.Module:
    """A 2-layer GPT with random (non-zero) weights everywhere, in eval mode."""
    kwargs = {**TINY, **overrides}
    model = GPT_models["GPT-tiny"](**kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
        # Sharper logits so sampling is not close to uniform.
        model.output.weight.mul_(4.0)
    return model.eval()


@pytest.fixture(autouse=False)
def single_thread():
    """Tiny models run faster on one thread (and do not fight other processes for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
