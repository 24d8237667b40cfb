"""The decode speed layer of the GPT: faster layers swapped into a plain model while it samples.

Contract: ``gpt.py`` is the architecture with its plain PyTorch forward (``nn.Linear``, masked SDPA over the whole
KV cache, as the original). :func:`accelerate` gives that model's ``nn.Linear`` and ``Attention`` modules the classes
below *in place*: the same module objects, parameters and state-dict keys (checkpoints load and save unchanged); only
the forward of a few-row product and of a one-token decode step changes. :func:`restore` gives them their plain
classes back and drops what the fast layers added (packed weight copies, decode settings). The sampling entry points
take this path by default -- :func:`~autoregressive.models.generate.generate` for its call (:func:`accelerated`),
:class:`~autoregressive.models.static_decode.StaticDecoder` until :meth:`close` -- so a model built by ``build_gpt`` /
``load_gpt`` and used for training never runs any of it.

Why a separate layer: decoding at small batch multiplies 1..16 rows by every weight once per token, so a step is
bound by how fast the weights stream from memory, and PyTorch's defaults for that shape are slow on CPU (MKL's GEMM
for 1..8 rows streams a weight much more slowly than ``weight @ x.T``, its GEMV slower still; the fused attention
kernel is built for many queries; see benchmarks/bench_gpt_sampling.py and benchmarks/README.md). The tricks below
speed that up without touching the architecture:

* :class:`FastLinear`, 1..8 rows on CPU: ``weight @ x.T`` (one row computed as two), on by default;
  ``with small_batch_cpu_matmul(False):`` measures or compares against ``F.linear``. With :func:`prepack`, small
  products run through a packed copy of the weight: ``'native'`` (utils/cpu_kernels.py, 1..16 float32 rows, about the
  memory's read bandwidth) or ``'onednn'`` (3+ rows; 2-3x MKL's rate for 4..16 rows on this project's CPU). Each
  equals ``F.linear`` up to float summation order.
* :class:`FastAttention`, with ``valid_len`` set by a decoder of one new token at position ``valid_len - 1``: the
  filled prefix ``[0, valid_len)`` is all visible to it, so attention reads only that prefix, unmasked, instead of the
  whole masked cache; with ``native_attention`` through utils/cpu_kernels.py's one-query decode attention. Unset (the
  default), it is the plain attention, so the default decode path (math SDPA over the masked cache) is unchanged.

The default eager and static decoders use the 1..8-row product only (tokens bit-identical between them); the prefix
attention, packed copies and native kernels are the ``+fused`` / ``+packed`` / ``+native`` / ``+onednn`` engines
(autoregressive/engine.py), which round differently.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import cpu_kernels

from .gpt import Attention

__all__ = ["accelerate", "restore", "accelerated", "prepack", "clear_prepack", "FastLinear", "FastAttention",
           "small_batch_cpu_matmul", "cpu_prepack_available", "CPU_KERNELS", "resolve_cpu_kernel"]

# On by default; per thread / task, so a benchmark or test can switch it off around one call.
_SMALL_BATCH_CPU_MATMUL: contextvars.ContextVar[bool] = contextvars.ContextVar("small_batch_cpu_matmul", default=True)


@contextlib.contextmanager
def small_batch_cpu_matmul(enabled: bool) -> Iterator[None]:
    """Use (or not) the ``weight @ x.T`` CPU path of :class:`FastLinear` for 1..8 rows inside the block."""
    token = _SMALL_BATCH_CPU_MATMUL.set(bool(enabled))
    try:
        yield
    finally:
        _SMALL_BATCH_CPU_MATMUL.reset(token)


def cpu_prepack_available() -> bool:
    """oneDNN's prepacked linear (what inductor uses for frozen CPU weights) is in this torch build."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


CPU_KERNELS = ("auto", "native", "onednn")  # prepacked CPU products: see prepack()


def resolve_cpu_kernel(kernel: str, rows: int, dtype: torch.dtype) -> str:
    """The prepacked product ``kernel`` means for ``rows``-row products of ``dtype`` weights: 'native' (the project's
    float32 kernel, utils/cpu_kernels.py, 1..16 rows) or 'onednn'. 'auto' is native where it applies and builds, else
    oneDNN; an explicit 'native' that cannot run raises, naming why."""
    if kernel not in CPU_KERNELS:
        raise ValueError(f"cpu kernel must be one of {list(CPU_KERNELS)}, got {kernel!r}")
    fits = dtype == torch.float32 and 1 <= rows <= cpu_kernels.MAX_ROWS
    if kernel == "native":
        if not fits:
            raise ValueError(f"the native CPU kernel multiplies 1..{cpu_kernels.MAX_ROWS} float32 rows; this decoder "
                             f"has {rows} {dtype} rows (use 'onednn' or 'auto')")
        if not cpu_kernels.available():
            raise RuntimeError(f"the native CPU kernel is unavailable: {cpu_kernels.unavailable_reason()}")
        return "native"
    if kernel == "auto" and fits and cpu_kernels.available():
        return "native"
    if not cpu_prepack_available():
        raise ValueError("prepacked oneDNN products need oneDNN (torch.backends.mkldnn), which this torch build lacks")
    return "onednn"


class FastLinear(nn.Linear):
    """``nn.Linear`` with faster CPU paths for a few rows; installed by :func:`accelerate`, never constructed.

    The packed copy (:meth:`prepack_cpu`) is not part of the state dict, costs the weight's memory once more, and is
    ignored once the weight changes (training) or while autograd needs the weight's gradient.
    """

    _packed: Optional[tuple[str, torch.Tensor, int]] = None  # (kernel, packed weight, weight._version when packed)

    def prepack_cpu(self, rows: int, kernel: str = "onednn") -> None:
        """Pack the weight for ``rows``-row products with ``kernel`` ('native' or 'onednn', see
        :func:`resolve_cpu_kernel`); a no-op off the CPU, with a bias, or for other dtypes."""
        w = self.weight
        if w.device.type != "cpu" or self.bias is not None:
            return
        if kernel == "native" and w.dtype == torch.float32:
            self._packed = ("native", cpu_kernels.pack_weight(w.detach()), w._version)
        elif kernel == "onednn" and w.dtype in (torch.float32, torch.bfloat16) and cpu_prepack_available():
            self._packed = ("onednn", torch.ops.mkldnn._reorder_linear_weight(w.detach(), int(rows)), w._version)

    def clear_prepack(self) -> None:
        self.__dict__.pop("_packed", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        packed = self._packed
        if packed is not None and x.device.type == "cpu" and x.dtype == self.weight.dtype \
                and packed[2] == self.weight._version and not (torch.is_grad_enabled() and self.weight.requires_grad):
            flat = x.reshape(rows, x.shape[-1])
            if packed[0] == "native" and 1 <= rows <= cpu_kernels.MAX_ROWS:
                return cpu_kernels.linear(flat, packed[1], self.out_features).reshape(*x.shape[:-1], self.out_features)
            if packed[0] == "onednn" and rows >= 3:
                out = torch.ops.mkldnn._linear_pointwise(flat, packed[1], None, "none", [], "")
                return out.reshape(*x.shape[:-1], self.out_features)
        if x.device.type == "cpu" and 1 <= rows <= 8 and self.bias is None and _SMALL_BATCH_CPU_MATMUL.get():
            flat = x.reshape(rows, x.shape[-1])
            if rows == 1:  # MKL's matrix-vector product streams the weight ~2.5x slower than a 2-column product
                flat = torch.cat([flat, flat])
            out = (self.weight @ flat.T).T[:rows].contiguous()
            return out.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)


class FastAttention(Attention):
    """The GPT's attention with an optional prefix-only decode step; installed by :func:`accelerate`.

    ``valid_len`` (set per step by a decoder, None otherwise) and ``native_attention`` are instance settings, not
    state: :func:`restore` drops them.
    """

    valid_len: Optional[int] = None
    native_attention: bool = False

    def attend_cached(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      mask: Optional[torch.Tensor]) -> torch.Tensor:
        n = self.valid_len
        if n is None:
            return super().attend_cached(q, k, v, mask)
        if q.shape[2] != 1:  # the prefix is unmasked: a multi-token step would let earlier tokens see later ones
            raise ValueError(f"valid_len is for one-token decode steps, got {q.shape[2]} tokens")
        if self.native_attention and q.device.type == "cpu" and not self.training \
                and cpu_kernels.attention_supported(self.head_dim, q.dtype):
            return cpu_kernels.decode_attention(q, k, v, n)
        return self.attend(q, k[:, :, :n], v[:, :, :n], None, causal=False)


# plain class -> fast class; exact types only, so a module some other code subclassed is left alone
_FAST = {nn.Linear: FastLinear, Attention: FastAttention}
_PLAIN = {fast: plain for plain, fast in _FAST.items()}
_FAST_STATE = ("_packed", "valid_len", "native_attention")  # instance attributes the fast classes add


def accelerate(model: nn.Module) -> list[nn.Module]:
    """Give ``model``'s plain ``nn.Linear`` and GPT ``Attention`` modules their fast classes, in place (parameters,
    buffers, hooks and state-dict keys unchanged). Returns the modules it changed (already fast ones are skipped), for
    :func:`restore`. Works on a ``torch.compile`` wrapper's model too (pass either)."""
    changed = []
    for module in getattr(model, "_orig_mod", model).modules():
        fast = _FAST.get(type(module))
        if fast is not None:
            module.__class__ = fast
            changed.append(module)
    return changed


def restore(modules: Iterable[nn.Module]) -> None:
    """Give modules that :func:`accelerate` changed their plain classes back, dropping their packed weight copies and
    decode settings (modules already plain are left as they are)."""
    for module in modules:
        plain = _PLAIN.get(type(module))
        if plain is not None:
            for name in _FAST_STATE:
                module.__dict__.pop(name, None)
            module.__class__ = plain


@contextlib.contextmanager
def accelerated(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with its fast layers inside the block; afterwards only the modules this block changed are plain
    again (so a decoder that holds the model fast keeps it fast)."""
    changed = accelerate(model)
    try:
        yield model
    finally:
        restore(changed)


def prepack(model: nn.Module, rows: int, kernel: str) -> None:
    """Packed weight copies for ``rows``-row products with ``kernel`` in every fast linear layer of ``model``."""
    for module in model.modules():
        if isinstance(module, FastLinear):
            module.prepack_cpu(rows, kernel)


def clear_prepack(model: nn.Module) -> None:
    """Drop every packed weight copy in ``model`` (frees that memory)."""
    for module in model.modules():
        if isinstance(module, FastLinear):
            module.clear_prepack()
