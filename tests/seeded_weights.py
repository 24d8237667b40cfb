"""Deterministic weights that depend only on each tensor's key, shape and dtype (never on module order).

The parity vectors in tests/data/parity were computed by the original GigaTok code on weights filled by this rule, so
this project gets the very same numbers by filling its own state dict (same keys and shapes) the same way:

    model.load_state_dict(seeded_state_dict(model.state_dict(), seed=0), strict=True)

Each float tensor draws standard normals from its own generator, seeded with
``(seed * 1_000_003 + crc32(key)) % 2**63``, in float32, then scaled by the kind of tensor the key names:

    key ends with "running_var"                      1 + 0.1 * |z|
    key ends with "running_mean" or "bias"           0.02 * z
    1-D tensor whose key ends with "weight"          1 + 0.1 * z          (norm scales)
    2-D and larger                                   z / sqrt(fan_in)     (fan_in: all but dim 0 for 4-D/5-D kernels,
                                                                           the last dim otherwise)
    any other float tensor                           0.02 * z

and is cast to the template's dtype. Integer and bool tensors (counters, masks) keep the template's values (zeros
for a tensor on the meta device). ``tests/utils/test_seeded_weights.py`` pins the rule to fingerprints of the weights
the stored vectors were made with.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import torch

_SEED_MULTIPLIER = 1_000_003
_SEED_MODULUS = 2**63


def _noise(key: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    stream = torch.Generator().manual_seed((seed * _SEED_MULTIPLIER + zlib.crc32(key.encode())) % _SEED_MODULUS)
    return torch.randn(shape, generator=stream, dtype=torch.float32)


def _fan_in(shape: tuple[int, ...]) -> int:
    fan = math.prod(shape[1:]) if len(shape) >= 4 else shape[-1]
    return max(fan, 1)


def seeded_tensor(key: str, shape: Sequence[int], dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """The deterministic value of one float tensor called ``key``."""
    shape = tuple(int(s) for s in shape)
    z = _noise(key, shape, seed)
    if key.endswith("running_var"):
        value = z.abs().mul(0.1).add(1.0)
    elif key.endswith(("running_mean", "bias")):
        value = z * 0.02
    elif len(shape) == 1 and key.endswith("weight"):
        value = z.mul(0.1).add(1.0)
    elif len(shape) >= 2:
        value = z / math.sqrt(_fan_in(shape))
    else:
        value = z * 0.02
    return value.to(dtype)


def seeded_state_dict(template: Mapping[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """A new state dict with the template's keys, shapes and dtypes, filled by the rule above."""
    filled = {}
    for key, tensor in template.items():
        if tensor.is_floating_point():
            filled[key] = seeded_tensor(key, tensor.shape, tensor.dtype, seed)
        elif tensor.device.type == "meta":
            filled[key] = torch.zeros(tensor.shape, dtype=tensor.dtype)
        else:
            filled[key] = tensor.detach().cpu().clone()
    return filled
