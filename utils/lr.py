"""Learning-rate schedules shared by the tokenizer and AR trainers (GigaTok ``scheduler.py`` formulas).

A schedule is a pure function of the step, so nothing has to be checkpointed: ``LRSchedule(...)(k)`` is the LR
for step ``k`` (0-based). Four shapes, all with the same linear warmup from ``base / init_div_factor``:

* ``cosine_v2`` (released tokenizers): cosine from ``base`` to ``end_lr`` over steps [W, T), ``end_lr`` after;
* ``cosine``: cosine from ``base`` to 0 over [W, T), 0 after;
* ``const``: ``base`` after warmup;
* ``wsd`` (warmup-stable-decay, decay_type "sqrt"): ``base`` until ``T - int(fract_decay*T)``, then
  ``base * max(1 - sqrt((k - n_hold) / n_decay), final_lr_factor)``.

Warmup (k < W): ``base * (k/W + (1 - k/W) / init_div_factor)`` = base * (0.01 + 0.99 k/W) for the default 100.

Which step's value an update uses is the trainer's choice. The original evaluates the schedule AFTER each
optimiser step with the pre-increment count, so update ``s`` runs at ``f(s - 1)`` and update 0 at the optimiser's
constructor LR (= base, even with warmup); :meth:`LRSchedule.lr_for_update` reproduces that with ``lag=True``.
Degenerate settings the original divides by zero on (``T == W``, ``n_decay == 0``, ``W == 0``) are defined here:
the cosine part is skipped (``end``/0 from W on) and a WSD run with no decay steps stays at ``base``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("cosine_v2", "cosine", "const", "wsd")


@dataclass(frozen=True)
class LRSchedule:
    name: str
    base_lr: float
    total_steps: int
    warmup: int = 0
    end_lr: float = 1e-5
    fract_decay: float = 0.2
    init_div_factor: float = 100.0
    final_lr_factor: float = 0.0

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ValueError(f"lr_scheduler must be one of {list(SCHEDULES)}, got {self.name!r}")
        if self.total_steps < 0 or self.warmup < 0:
            raise ValueError(f"total_steps ({self.total_steps}) and warmup ({self.warmup}) must be >= 0")
        if self.name == "wsd" and not 0.0 <= self.fract_decay <= 1.0:
            raise ValueError(f"fract_decay must lie in [0, 1], got {self.fract_decay}")

    @property
    def wsd_decay_start(self) -> int:
        """First step of the WSD decay phase (``T - int(fract_decay * T)``)."""
        return self.total_steps - int(self.fract_decay * self.total_steps)

    def __call__(self, k: int) -> float:
        base, w, t = float(self.base_lr), int(self.warmup), int(self.total_steps)
        if k < w:
            frac = k / w
            return base * (frac + (1.0 - frac) / self.init_div_factor)
        if self.name == "const":
            return base
        if self.name in ("cosine", "cosine_v2"):
            end = float(self.end_lr) if self.name == "cosine_v2" else 0.0
            if k >= t or t <= w:
                return end
            progress = (k - w) / (t - w)
            return end + 0.5 * (base - end) * (1.0 + math.cos(math.pi * progress))
        # wsd
        n_decay = int(self.fract_decay * t)
        n_hold = t - n_decay
        if k < n_hold or n_decay == 0:
            return base
        return base * max(1.0 - math.sqrt((k - n_hold) / n_decay), self.final_lr_factor)

    def lr_for_update(self, s: int, lag: bool = False, first_update: int = 0) -> float:
        """LR used by the optimiser update at step ``s`` (0-based count of completed updates).

        ``lag=False``: ``f(s)``. ``lag=True`` (original): ``base`` for the first update (``s == first_update``,
        e.g. the discriminator's first step at disc_start - 1) and ``f(s - 1)`` afterwards.
        """
        if not lag:
            return self(s)
        return float(self.base_lr) if s <= first_update else self(s - 1)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Write ``lr`` into every param group (times the group's ``lr_mult`` if it has one); returns ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    return lr
