"""Exponential moving average of a model's parameters (shared by the tokenizer and AR trainers).

As the original ``update_ema``: parameters only (buffers are never averaged), constant decay (0.9999), update
``ema = decay * ema + (1 - decay) * param`` after every optimiser step, initialised as a copy of the model.
The averages live in a dict keyed by parameter name, not in a second model, so the same class works for a plain
module, a DDP/compiled model's inner module, and an FSDP2-sharded module (the averages are then DTensors with the
parameters' sharding: each rank averages its own shard and nothing is communicated until :meth:`state_dict`).
"""
from __future__ import annotations

import sys
from typing import Mapping

import torch
import torch.nn as nn


def _is_dtensor(t) -> bool:
    # torch.distributed.tensor is slow to import; a DTensor can only exist once it has been imported
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(t, mod.DTensor)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if _is_dtensor(t) else t


class EMA:
    """EMA of ``model.named_parameters()``; call :meth:`update` after each optimiser step."""

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        self.decay = float(decay)
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        decay = self.decay if decay is None else float(decay)
        params = dict(model.named_parameters())
        if params.keys() != self.shadow.keys():
            missing = sorted(set(self.shadow) ^ set(params))[:5]
            raise KeyError(f"EMA and model parameter names differ (e.g. {missing}); pass the unwrapped model")
        ema = [_local(self.shadow[n]) for n in self.shadow]
        cur = [_local(params[n].detach()) for n in self.shadow]
        torch._foreach_mul_(ema, decay)
        torch._foreach_add_(ema, cur, alpha=1.0 - decay)

    @torch.no_grad()
    def state_dict(self, model: nn.Module | None = None, keep: bool = True,
                   device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Full (unsharded) averages on ``device``; with ``model``, its buffers are added so the result is a
        complete model state dict (key order of ``model.state_dict()``) loadable like a model checkpoint.

        Sharded averages are all-gathered: call on every rank; ``keep=False`` ranks return ``{}``.
        """
        full = {}
        for name, t in self.shadow.items():
            t = t.full_tensor() if _is_dtensor(t) else t
            if keep:
                full[name] = t.detach().to(device, copy=True)
        if model is None or not keep:
            return full
        out = {}
        for key, value in model.state_dict().items():
            if key in full:
                out[key] = full[key]
            else:
                value = value.full_tensor() if _is_dtensor(value) else value
                out[key] = value.detach().to(device, copy=True)
        return out

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """Load full averages (extra keys such as buffers are ignored); shards are cut out for DTensors."""
        missing = [n for n in self.shadow if n not in state]
        if missing and strict:
            raise KeyError(f"EMA state lacks parameters {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        for name, t in self.shadow.items():
            if name not in state:
                continue
            src = state[name]
            if _is_dtensor(t):
                from torch.distributed.tensor import distribute_tensor
                src = distribute_tensor(src.to(t.device, t.dtype), t.device_mesh, t.placements)
                t.to_local().copy_(src.to_local())
            else:
                t.copy_(src.to(t.device, t.dtype))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters with the averages (e.g. for evaluation)."""
        params = dict(model.named_parameters())
        for name, t in self.shadow.items():
            _local(params[name].data).copy_(_local(t))
