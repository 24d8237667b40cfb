"""Autoregressive sampling for the c2i GPT: KV-cache decoding, classifier-free guidance, CFG schedules.

Layout and arithmetic follow the original ``generate.py``:

* With ``cfg_scale > 1`` the batch is doubled: the conditional rows come first, then the same number of
  unconditional rows (class id ``num_classes``, the null class). Both halves are fed the same sampled token.
* Guided logits are ``l_u + s * (l_c - l_u)`` in float32. Token 0 (the prefill of the class slot) always uses
  the raw ``cfg_scale``; decode step ``i`` (producing token ``i + 1``) uses the schedule at the ratio
  ``r = (i + 1) / (max_new_tokens - 1)``.
* Prefill runs with the default attention kernel, every decode step with the math kernel, over the whole
  zero-initialised cache (``1 + max_new_tokens`` rounded up to a multiple of 8) under a causal mask.

Schedules (``s`` = ``cfg_scale``; "off" steps use 1.0001 exactly as the original):

==============  ==========================================================  ==============================
name            scale at ratio r                                            kwargs
==============  ==========================================================  ==============================
constant        s                                                           none
linear          1 + (s-1) r + 1e-4                                          none
linear_re       1 + (s-1) (1-r) + 1e-4                                      none
triangular      rising to s at ``peak``, falling after (+1e-4)              peak (0.5) [1]
rectangular     s if window_start <= r <= window_end else 1 + 1e-4          window_start (0.05), window_end (1.0)
step            1.0 if s == 1; s if window_start <= r; else 1 + 1e-4        window_start (required) [2]
cosine          1 + (s-1) * (1 + cos(pi r)) / 2                             none [3]
sigmoid         1 + (s-1) * sigmoid(steepness * (r - center))               center (0.5), steepness (10) [4]
==============  ==========================================================  ==============================

[1] The original fixes the peak at 0.5 (its kwargs never reach the formula); ``peak`` is new here and its
    default reproduces the original.
[2] ``window_end`` is accepted and ignored, as in the original (its visualization script passes it).
[3] Broken in the original (``math`` is not imported, so it raises NameError); this is the formula it meant.
[4] Broken in the original (accepted by the name check but has no branch, so it raises UnboundLocalError);
    the formula here is this project's own choice: a rising S-curve from about 1 to about s.

When a scheduled scale is <= 1.0 during decode the conditional logits are used alone (the original runs the
un-doubled batch in that case; here the doubled batch keeps running so the unconditional cache stays valid).
``cfg_interval > -1`` likewise uses the conditional logits alone for every decode step ``i > cfg_interval``.

Random numbers (a deliberate difference from the original, which calls ``torch.multinomial`` on the device):
each row draws its ``max_new_tokens`` uniforms up front from its own generator on the CPU, and a token is
picked by inverting that row's float64 CDF. So a row's samples depend only on its own generator, its class
and the model -- not on the batch size, on how a run is split over processes, or on the device. Pass
``generator`` as

* a list with one ``torch.Generator`` or integer seed per row (batch-split independent; see
  :func:`sample_generators` for the seeding scheme the sample scripts use),
* a single ``torch.Generator`` (reproducible for the same batch, but rows depend on their batch position), or
* ``None`` (uses the global CPU RNG, reproducible under ``torch.manual_seed``).

Greedy decoding (``sample_logits=False``) takes the top-1 of the softmax, as the original does; no random
numbers are drawn. ``top_k=1`` with sampling gives the same tokens (up to exact ties).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .fast_decode import accelerated

__all__ = ["generate", "SamplingConfig", "cfg_scale_at", "CFG_SCHEDULES", "top_k_top_p_filtering", "sample",
           "sample_generators", "SamplingPlan", "guide_and_pick", "sampling_config"]

_OFF = 1.0 + 1e-4
_SCHEDULE_KWARGS = {
    "constant": set(),
    "linear": set(),
    "linear_re": set(),
    "triangular": {"peak"},
    "rectangular": {"window_start", "window_end"},
    "step": {"window_start", "window_end"},
    "cosine": set(),
    "sigmoid": {"center", "steepness"},
}
CFG_SCHEDULES = tuple(_SCHEDULE_KWARGS)

GeneratorArg = Union[None, torch.Generator, Sequence[Union[torch.Generator, int]], torch.Tensor]


def cfg_scale_at(schedule: str, cfg_scale: float, ratio: float, **kwargs) -> float:
    """Guidance scale of ``schedule`` at decode ratio ``ratio`` in (0, 1] (see the module docstring)."""
    if schedule not in _SCHEDULE_KWARGS:
        raise ValueError(f"unknown cfg_schedule {schedule!r}; choose one of {list(CFG_SCHEDULES)}")
    unknown = set(kwargs) - _SCHEDULE_KWARGS[schedule]
    if unknown:
        raise ValueError(f"cfg_schedule {schedule!r} does not take {sorted(unknown)} "
                         f"(allowed: {sorted(_SCHEDULE_KWARGS[schedule])})")
    s, r = float(cfg_scale), float(ratio)
    if schedule == "constant":
        return s
    if schedule == "linear":
        return 1 + (s - 1) * r + 1e-4
    if schedule == "linear_re":
        return 1 + (s - 1) * (1 - r) + 1e-4
    if schedule == "triangular":
        peak = float(kwargs.get("peak", 0.5))
        if not 0.0 < peak < 1.0:
            raise ValueError(f"triangular peak must be in (0, 1), got {peak}")
        if r < peak:
            return 1 + (s - 1) * (r / peak) + 1e-4
        return 1 + (s - 1) * ((1 - r) / (1 - peak)) + 1e-4
    if schedule == "rectangular":
        ws, we = float(kwargs.get("window_start", 0.05)), float(kwargs.get("window_end", 1.0))
        return s if ws <= r <= we else _OFF
    if schedule == "step":
        if "window_start" not in kwargs:
            raise ValueError("cfg_schedule 'step' needs cfg_schedule_kwargs={'window_start': ...} (e.g. 0.18)")
        if s == 1.0:
            return 1.0
        return s if float(kwargs["window_start"]) <= r else _OFF
    if schedule == "cosine":
        return 1 + (s - 1) * 0.5 * (1 + math.cos(math.pi * r))
    # sigmoid
    c, k = float(kwargs.get("center", 0.5)), float(kwargs.get("steepness", 10.0))
    return 1 + (s - 1) / (1 + math.exp(-k * (r - c)))


def top_k_top_p_filtering(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set filtered logits to -inf (returns a new tensor). Top-k keeps ties with the k-th value; top-p keeps the
    smallest prefix of the sorted distribution whose mass exceeds ``top_p`` (always at least the top token)."""
    logits = logits.clone()
    if top_k > 0:
        k = min(max(int(top_k), 1), logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop_sorted = cum > top_p
        drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           sample_logits: bool = True, uniforms: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pick one token per row from ``logits`` [B, V]; returns int64 [B].

    Sampling inverts each row's CDF at ``uniforms`` [B] (values in [0, 1)); without them a fresh
    ``torch.rand`` from the global RNG is used.
    """
    logits = logits.float()
    if float(temperature) != 1.0:  # (dividing by 1.0 changes no value: skip the pass over [B, V])
        logits = logits / max(float(temperature), 1e-5)
    if top_k > 0 or top_p < 1.0:
        logits = top_k_top_p_filtering(logits, top_k, top_p)
    probs = F.softmax(logits, dim=-1)
    if not sample_logits:
        return torch.topk(probs, 1, dim=-1).indices[:, 0]
    if uniforms is None:
        uniforms = torch.rand(probs.shape[0], device=probs.device)
    cdf = probs.double().cumsum(dim=-1)
    # u < 1 in float32, so u * total < total in float64: the index is always a token with probability > 0.
    target = uniforms.to(cdf.device, torch.float64).unsqueeze(-1) * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True)[:, 0].clamp_max(probs.shape[-1] - 1)


def sample_generators(global_seed: int, indices: Iterable[int]) -> list[torch.Generator]:
    """One CPU generator per sample index, for sampling that does not depend on how a run is batched.

    The seed of sample ``index`` is ``(global_seed * 0x9E3779B1 + index) mod 2**32`` (torch's CPU generator
    keeps only 32 bits of a seed): distinct indices of one run always get distinct seeds. The sample scripts
    give every image its own generator from its global index, so the images do not depend on the number of
    processes or the per-process batch size.
    """
    gens = []
    for index in indices:
        index = int(index)
        if index < 0:
            raise ValueError(f"sample index {index} must be >= 0")
        gens.append(torch.Generator().manual_seed((int(global_seed) * 0x9E3779B1 + index) % 2 ** 32))
    return gens


def _draw_uniforms(generator: GeneratorArg, batch: int, steps: int, device: torch.device) -> torch.Tensor:
    if generator is None:
        u = torch.rand(batch, steps)
    elif isinstance(generator, torch.Generator):
        u = torch.rand(batch, steps, generator=generator, device=generator.device)
    else:
        gens = generator.tolist() if isinstance(generator, torch.Tensor) else list(generator)
        if len(gens) != batch:
            raise ValueError(f"generator has {len(gens)} entries for a batch of {batch} rows (one per row)")
        rows = []
        for g in gens:
            if not isinstance(g, torch.Generator):
                g = torch.Generator().manual_seed(int(g))
            rows.append(torch.rand(steps, generator=g, device=g.device).cpu())
        u = torch.stack(rows)
    return u.to(device)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "_orig_mod", model)


def check_sampling_args(cfg_scale: float, temperature: float, top_k: int, top_p: float) -> None:
    """Reject sampling settings that would silently give wrong samples (NaN scales, negative temperatures, ...)."""
    if not math.isfinite(float(cfg_scale)):
        raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale}")
    if not math.isfinite(float(temperature)) or float(temperature) < 0:
        raise ValueError(f"temperature must be > 0 (or 0 for greedy decoding), got {temperature}")
    if int(top_k) < 0:
        raise ValueError(f"top_k must be >= 0 (0: no top-k filter), got {top_k}")
    if not (0.0 < float(top_p) <= 1.0):
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")



@dataclass(frozen=True)
class SamplingConfig:
    """Every sampling knob in one object, passed unchanged through :func:`generate`, :class:`SamplingPlan` and
    :meth:`~autoregressive.models.static_decode.StaticDecoder.generate` (adding a knob is one field plus its use).

    Checked once when built (a bad value fails here, not in the middle of a run). ``seed`` is the seed policy of the
    sample scripts: image ``i`` draws its random numbers from ``sample_generators(seed, [i])`` (:meth:`generators`);
    ``generate`` itself takes the row generators as an argument, because they name rows, not settings.
    """

    cfg_scale: float = 1.0
    cfg_schedule: str = "constant"
    cfg_schedule_kwargs: dict = field(default_factory=dict)
    cfg_interval: float = -1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    sample_logits: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        # normalise types once, so the plan and the run settings see plain floats/ints (and a private kwargs copy)
        object.__setattr__(self, "cfg_scale", float(self.cfg_scale))
        object.__setattr__(self, "cfg_schedule_kwargs", dict(self.cfg_schedule_kwargs or {}))
        check_sampling_args(self.cfg_scale, self.temperature, self.top_k, self.top_p)
        cfg_scale_at(self.cfg_schedule, self.cfg_scale, 1.0, **self.cfg_schedule_kwargs)  # name and kwargs

    @property
    def greedy(self) -> bool:
        """Temperature 0 means greedy decoding (top-1, no random numbers), as does ``sample_logits=False``."""
        return not self.sample_logits or float(self.temperature) == 0.0

    def replace(self, **changes: Any) -> SamplingConfig:
        return dataclasses.replace(self, **changes)

    def generators(self, indices: Iterable[int]) -> list[torch.Generator]:
        """One generator per image index under this config's seed (see :func:`sample_generators`)."""
        return sample_generators(self.seed, indices)

    def scales(self, max_new_tokens: int) -> list[float]:
        """Guidance scale of every token: token 0 (the prefill) the raw scale, decode step ``i`` the schedule at
        ratio ``(i + 1) / (max_new_tokens - 1)``, 1.0 after ``cfg_interval``."""
        steps = max_new_tokens - 1
        values = [self.cfg_scale]
        for i in range(steps):
            scale = cfg_scale_at(self.cfg_schedule, self.cfg_scale, (i + 1) / steps, **self.cfg_schedule_kwargs)
            if self.cfg_interval > -1 and i > self.cfg_interval:
                scale = 1.0
            values.append(scale)
        return values


SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingConfig))


def sampling_config(config: Optional[SamplingConfig] = None, **knobs: Any) -> SamplingConfig:
    """``config`` with ``knobs`` (SamplingConfig fields as keywords, the old call form) applied on top."""
    unknown = set(knobs) - SAMPLING_FIELDS
    if unknown:
        raise TypeError(f"unknown sampling argument(s) {sorted(unknown)}; SamplingConfig has {sorted(SAMPLING_FIELDS)}")
    if config is None:
        return SamplingConfig(**knobs)
    return config.replace(**knobs) if knobs else config


class SamplingPlan:
    """Everything a decode loop needs besides the model, checked and precomputed once per ``generate`` call.

    Shared by the eager :func:`generate` and :class:`~autoregressive.models.static_decode.StaticDecoder`, so both
    guide and pick tokens with the same arithmetic: ``scales[j]`` is the guidance scale of token ``j`` (token 0 = the
    prefill) as a float32 tensor, ``uniforms`` [batch, max_new_tokens] the per-row random numbers (None: greedy).
    """

    def __init__(self, core: torch.nn.Module, cond: torch.Tensor, max_new_tokens: int, config: SamplingConfig,
                 generator: GeneratorArg = None):
        if cond.ndim != 1 or cond.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(f"cond must be a 1-D integer tensor of class ids, got {cond.dtype} {tuple(cond.shape)}")
        if cond.numel() == 0:
            raise ValueError("cond is empty")
        device = core.tok_embeddings.weight.device
        cond = cond.to(device=device, dtype=torch.long)
        core.check_class_ids(cond, allow_null=False)
        if not 1 <= max_new_tokens <= core.block_size:
            raise ValueError(f"max_new_tokens must be in [1, block_size={core.block_size}], got {max_new_tokens}")

        self.config = config
        self.batch = cond.shape[0]
        self.max_new_tokens = int(max_new_tokens)
        self.guided = config.cfg_scale > 1.0
        self.cond = cond
        self.cond_all = torch.cat([cond, torch.full_like(cond, core.num_classes)]) if self.guided else cond
        greedy = config.greedy
        # the token pick's settings as plain values (a compiled step and a captured graph key on them)
        self.pick = (float(config.temperature), 1 if greedy and config.temperature == 0 else int(config.top_k),
                     float(config.top_p), not greedy)
        self.temperature, self.top_k, self.top_p, self.sample_logits = self.pick
        self.uniforms = _draw_uniforms(generator, self.batch, max_new_tokens, device) if not greedy else None
        self.scales = torch.tensor(config.scales(max_new_tokens), dtype=torch.float32, device=device)

    def step_uniforms(self, token_index: int) -> Optional[torch.Tensor]:
        return None if self.uniforms is None else self.uniforms[:, token_index]


def guide_and_pick(logits: torch.Tensor, batch: int, guided: bool, scale: torch.Tensor,
                   uniforms: Optional[torch.Tensor], temperature: float, top_k: int, top_p: float,
                   sample_logits: bool) -> torch.Tensor:
    """Next token of each image from the last-position logits [rows, V]: CFG combination, then :func:`sample`.

    With guidance the rows are [conditional; unconditional]; ``scale`` (a 0-d tensor, so a compiled step never
    depends on its value) <= 1 uses the conditional logits alone. Fixed shapes and no host synchronisation: the
    same function runs eagerly and inside a captured CUDA graph.
    """
    if guided:
        cond_logits, uncond_logits = logits[:batch], logits[batch:]
        mixed = uncond_logits + scale * (cond_logits - uncond_logits)
        logits = torch.where(scale > 1.0, mixed, cond_logits)
    return sample(logits, temperature, top_k, top_p, sample_logits, uniforms)


def generate(model: torch.nn.Module, cond: torch.Tensor, max_new_tokens: int,
             config: Optional[SamplingConfig] = None, *, generator: GeneratorArg = None,
             **knobs: Any) -> torch.Tensor:
    """Sample ``max_new_tokens`` image tokens per class id in ``cond`` [B]; returns int64 [B, max_new_tokens].

    The sampling settings are one :class:`SamplingConfig`; the keyword form ``generate(model, cond, n,
    cfg_scale=1.75, top_k=...)`` builds one from the keywords (on top of ``config`` when both are given).
    ``model`` is a :class:`~autoregressive.models.gpt.Transformer` (or a ``torch.compile`` wrapper of one) in
    eval mode. Class ids must be in [0, num_classes). See the module docstring for guidance, schedules and
    the random-number scheme. No process group is needed. The model decodes with the fast layers of
    :mod:`~autoregressive.models.fast_decode` (given back their plain classes on return). Sampling runs in inference
    mode; the result is an ordinary tensor (cloned outside it), so ``decode_code`` and autograd-enabled code accept
    it. This eager loop is the reference; for many batches
    :class:`~autoregressive.models.static_decode.StaticDecoder` gives the same tokens with a reusable cache and a
    CUDA-graph (or compiled) step.
    """
    config = sampling_config(config, **knobs)
    with torch.inference_mode(), accelerated(model):  # the decode speed layer, for this call only
        out = _generate(model, cond, max_new_tokens, config, generator)
    return out.clone()


def _generate(model: torch.nn.Module, cond: torch.Tensor, max_new_tokens: int, config: SamplingConfig,
              generator: GeneratorArg) -> torch.Tensor:
    core = _unwrap(model)
    plan = SamplingPlan(core, cond, max_new_tokens, config, generator)
    device = plan.cond.device

    def pick(logits: torch.Tensor, token_index: int) -> torch.Tensor:
        return guide_and_pick(logits, plan.batch, plan.guided, plan.scales[token_index],
                              plan.step_uniforms(token_index), *plan.pick)

    out = torch.empty(plan.batch, max_new_tokens, dtype=torch.long, device=device)
    input_pos = torch.zeros(1, dtype=torch.long, device=device)  # one tensor, advanced in place (compile-friendly)
    core.setup_caches(plan.cond_all.shape[0], 1 + max_new_tokens, core.tok_embeddings.weight.dtype)
    try:
        logits, _ = model(None, plan.cond_all, input_pos=input_pos)
        token = pick(logits[:, -1], 0)
        out[:, 0] = token
        with sdpa_kernel([SDPBackend.MATH]):
            for i in range(max_new_tokens - 1):
                x = token.view(plan.batch, 1)
                if plan.guided:
                    x = torch.cat([x, x])
                input_pos.add_(1)
                logits, _ = model(x, plan.cond_all, input_pos=input_pos)
                token = pick(logits[:, -1], i + 1)
                out[:, i + 1] = token
    finally:
        core.clear_caches()
    return out
