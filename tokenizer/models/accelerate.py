"""The tokenizer's CPU speed layer: ``accelerate(model)`` swaps fast subclasses into a built tokenizer.

Contract: the model files (``cnn.py``, ``vit.py``, ``quantizer.py``) hold the architecture and the plain PyTorch
forward; everything here computes the same maths with float rounding differences only (checked against the plain
model and the parity vectors), keeps every parameter, buffer and state-dict key, and falls back to the plain forward
wherever its conditions do not hold (GPU, autograd recording, autocast, other dtypes, torch.compile for the native
kernel). ``tokenizer.build_tokenizer`` / ``load_tokenizer`` apply it by default (``fast=False`` opts out).

Why a swap of ``__class__`` and not new modules: the parameters stay the same objects (an optimiser, an EMA copy or
a loaded state dict keeps pointing at them), nothing is copied, and it works on any device, meta included. Each fast
class is a subclass of the plain one without state of its own, so ``isinstance`` checks (weight init, optimiser
groups, FSDP policies) still hold and applying ``accelerate`` twice changes nothing.

What is faster, and why (measured on this project's AVX-512 CPU, see benchmarks/README.md):

- CNN levels of at least ``CL_MIN_PIXELS`` pixels run in channels-last memory format on CPU, where oneDNN's 3x3
  convolutions are up to ~30% faster; the low-resolution levels stay NCHW, where both layouts convolve alike and
  channels-last would only add a copy of each weight per call. ``channels_last`` on the fast Encoder/Decoder:
  ``None`` = on CPU only, ``True``/``False`` to force. Inputs and outputs keep NCHW for the caller. This also holds
  under autograd (same gradients), so CPU training keeps the layout's speed.
- The 3x3 convolutions of those channels-last levels run through the native Winograd F(2x2, 3x3) kernel
  (``utils/cpu_kernels.py``) in float32 inference: see :class:`WinogradConv3x3`.
- The residual add runs in place into the convolution's fresh output (autograd-safe: add needs neither operand for
  its backward); when no gradient is recorded SiLU and the adaptive-norm affine also run in place, so that fewer
  large tensors are allocated (each one page-faults afresh on CPU).
- In fp32 CPU inference the ViT's matrix products run as 1x1 convolutions on a channels-last view, i.e. through
  oneDNN, whose fp32 GEMM is ~10-15% faster than the BLAS behind ``F.linear`` on AVX-512 CPUs; the attention is
  computed from the ``nn.MultiheadAttention`` parameters directly (one product for the query and key projections
  when they share their input, fused SDPA).

The fast Encoder/Decoder forwards repeat the plain ones' order of operations with the layout switches added; the
tests compare an accelerated model with a plain one, so a change to the architecture that is not mirrored here fails.
"""
from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import cpu_kernels
from utils.cpu_kernels import WINOGRAD_CHANNELS

from .cnn import AdaptiveGroupNorm, D2SUpsampler, Decoder, Encoder, ResnetBlock, depth_to_space_dcr
from .vit import TransformerDecoderLayer, TransformerLayer

__all__ = ["accelerate", "CL_MIN_PIXELS", "WinogradConv3x3"]

M = TypeVar("M", bound=nn.Module)

CL_MIN_PIXELS = 64 * 64  # levels with at least this many pixels run channels-last (when enabled)


def _no_grad_for(t: torch.Tensor) -> bool:
    """True when autograd records nothing for ``t``, so a fresh intermediate may be overwritten in place."""
    return not (torch.is_grad_enabled() and t.requires_grad)


def _norm_silu(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``silu(norm(x))``; in place on the norm's fresh output when nothing is recorded (same values, one less
    allocation)."""
    h = norm(x)
    return F.silu(h, inplace=_no_grad_for(h))


def _layout(flag: bool | None, h: torch.Tensor) -> torch.Tensor:
    """``h`` in the memory format of its level (a no-op when it already is; untouched when channels-last is off)."""
    if not (h.device.type == "cpu" if flag is None else flag):
        return h
    if h.shape[-2] * h.shape[-1] >= CL_MIN_PIXELS:
        return h.contiguous(memory_format=torch.channels_last)
    return h.contiguous()


def _is_channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class WinogradConv3x3(nn.Conv2d):
    """3x3 convolution, stride 1, padding 1 (an ``nn.Conv2d``: same parameters and state-dict keys) that runs
    channels-last float32 CPU inference through the native Winograd F(2x2, 3x3) kernel (utils/cpu_kernels.py): 16
    products per output tile and channel pair instead of 36, ~1.9x oneDNN's convolution for 128-256 channels at
    64x64 pixels and more on this project's CPU; float rounding differs by ~1e-6 relative. It applies to the
    channels-last levels (at least 64x64 pixels), 64/128/256 input channels and a multiple of 16 output channels,
    outside autograd and torch.compile; everything else, and ``winograd = False``, is ``nn.Conv2d``'s own path.
    """

    winograd: bool | None = None  # None: wherever it applies (and the kernel builds); False: never
    # (Winograd weight, the weight's (id, data_ptr, _version) when transformed): an in-place update bumps the version,
    # a `.data` swap changes the storage, load_state_dict(assign=True) the parameter itself
    _transformed: tuple[torch.Tensor, tuple[int, int, int]] | None = None

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1)

    def _winograd_applies(self, x: torch.Tensor) -> bool:
        return (self.winograd is not False and x.device.type == "cpu" and not torch.compiler.is_compiling()
                and self.kernel_size == (3, 3) and self.stride == (1, 1) and self.padding == (1, 1)
                and self.dilation == (1, 1) and self.groups == 1 and self.padding_mode == "zeros"
                and x.dtype == torch.float32 and x.dim() == 4
                and self.in_channels in WINOGRAD_CHANNELS[:3] and self.out_channels % 16 == 0
                and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0 and x.shape[-2] * x.shape[-1] >= CL_MIN_PIXELS
                and _is_channels_last(x)
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
                and self.weight.dtype == torch.float32 and cpu_kernels.available())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._winograd_applies(x):
            return super().forward(x)
        key = (id(self.weight), self.weight.data_ptr(), self.weight._version)
        cached = self._transformed
        if cached is None or cached[1] != key:  # a changed weight is transformed again
            cached = self._transformed = (cpu_kernels.winograd_weight(self.weight), key)
        return cpu_kernels.winograd_conv3x3(x, cached[0], self.bias)


def depth_to_space_channels_last(x: torch.Tensor, block: int = 2) -> torch.Tensor:
    """:func:`~tokenizer.models.cnn.depth_to_space_dcr` of a channels-last ``x`` as a channels-last tensor: one copy
    in NHWC order instead of a round trip through NCHW. Other layouts go to the plain function."""
    if not _is_channels_last(x):
        return depth_to_space_dcr(x, block)
    b, c4, h, w = x.shape
    c = c4 // (block * block)
    nhwc = x.permute(0, 2, 3, 1).reshape(b, h, w, block, block, c).permute(0, 1, 3, 2, 4, 5)
    return nhwc.reshape(b, h * block, w * block, c).permute(0, 3, 1, 2)


class FastResnetBlock(ResnetBlock):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_norm_silu(self.norm1, x))
        h = self.conv2(self.dropout(_norm_silu(self.norm2, h)))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return h.add_(shortcut)  # autograd-safe: add needs neither operand for its backward


class FastD2SUpsampler(D2SUpsampler):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space_channels_last(self.conv1(x), 2)


class FastAdaptiveGroupNorm(AdaptiveGroupNorm):
    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_shift(style)
        h = self.gn(x)
        if _no_grad_for(h) and _no_grad_for(scale) and _no_grad_for(shift):
            return h.mul_(scale).add_(shift)  # the same two roundings, in the norm's fresh output
        return h * scale + shift


class FastEncoder(Encoder):
    channels_last: bool | None = None  # None: channels-last activations on CPU (see the module docstring)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(_layout(self.channels_last, x))
        for level in self.conv_blocks:
            h = _layout(self.channels_last, h)
            for block in level.res:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = _layout(self.channels_last, h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(_norm_silu(self.norm_out, h)).contiguous()


class FastDecoder(Decoder):
    channels_last: bool | None = None  # None: channels-last activations on CPU (see the module docstring)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        style = z
        h = self.conv_in(_layout(self.channels_last, z))
        for block in self.mid:
            h = block(h)
        for level, adaptive in zip(self.conv_blocks, self.adaptive, strict=True):
            h = adaptive(_layout(self.channels_last, h), style)
            for block in level.res:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        h = _layout(self.channels_last, h)
        return self.conv_out(_norm_silu(self.norm_out, h)).contiguous()


def _cpu_fast_path(x: torch.Tensor) -> bool:
    """True for fp32 CPU inference (no autograd recording, no autocast): see the module docstring."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu"))


def _matmul_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` as a 1x1 convolution over the rows of ``x`` seen as channels-last pixels (oneDNN);
    no copy of ``x`` or ``weight`` when both are contiguous."""
    k, n = x.shape[-1], weight.shape[0]
    rows = x.reshape(1, -1, 1, k).permute(0, 3, 1, 2)  # [1, K, M, 1], channels-last strides
    out = F.conv2d(rows, weight.reshape(n, k, 1, 1), bias)  # [1, N, M, 1], channels-last
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], n)


class OneDNNLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _matmul_onednn(x, self.weight, self.bias) if _cpu_fast_path(x) else super().forward(x)


class FastMultiheadAttention(nn.MultiheadAttention):
    """Sequence-first attention computed from the module's parameters in fp32 CPU inference (see the module
    docstring) when no weights or masks are asked for; anything else is ``nn.MultiheadAttention``'s own forward."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask=None,
                need_weights: bool = True, attn_mask=None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not (_cpu_fast_path(query) and not need_weights and key_padding_mask is None and attn_mask is None
                and not is_causal and self.in_proj_weight is not None and self.in_proj_bias is not None
                and self.bias_k is None and not self.add_zero_attn and not self.batch_first
                and (self.dropout == 0.0 or not self.training)):
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        q, k, v = query, key, value
        d, heads = self.embed_dim, self.num_heads
        w, b = self.in_proj_weight, self.in_proj_bias
        if q is k and k is v:
            q, k, v = _matmul_onednn(q, w, b).chunk(3, dim=-1)
        elif q is k:
            q, k = _matmul_onednn(q, w[:2 * d], b[:2 * d]).chunk(2, dim=-1)
            v = _matmul_onednn(v, w[2 * d:], b[2 * d:])
        else:
            q = _matmul_onednn(q, w[:d], b[:d])
            k = _matmul_onednn(k, w[d:2 * d], b[d:2 * d])
            v = _matmul_onednn(v, w[2 * d:], b[2 * d:])

        def heads_first(t: torch.Tensor) -> torch.Tensor:  # (L, B, D) -> (B, H, L, D/H), a view
            return t.unflatten(-1, (heads, d // heads)).permute(1, 2, 0, 3)

        out = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v))
        out = out.permute(2, 0, 1, 3).reshape(q.shape[0], q.shape[1], d)
        return _matmul_onednn(out, self.out_proj.weight, self.out_proj.bias), None


# plain class -> its fast subclass, for the modules whose own forward changes
_FAST_MODULES: dict[type[nn.Module], type[nn.Module]] = {
    Encoder: FastEncoder, Decoder: FastDecoder, ResnetBlock: FastResnetBlock, D2SUpsampler: FastD2SUpsampler,
    AdaptiveGroupNorm: FastAdaptiveGroupNorm,
}
# parent class -> {child name: fast class} for the generic layers that are made fast only where the architecture
# uses them so (the block convolutions, the transformer layers' products; not e.g. the embeddings)
_FAST_CHILDREN: dict[type[nn.Module], dict[str, type[nn.Module]]] = {
    ResnetBlock: {"conv1": WinogradConv3x3, "conv2": WinogradConv3x3},
    D2SUpsampler: {"conv1": WinogradConv3x3},
    TransformerDecoderLayer: {"self_attn": FastMultiheadAttention, "multihead_attn": FastMultiheadAttention,
                              "linear1": OneDNNLinear, "linear2": OneDNNLinear},
    TransformerLayer: {"self_attn": FastMultiheadAttention, "linear1": OneDNNLinear, "linear2": OneDNNLinear},
}


def _swap(module: nn.Module, fast: type[nn.Module]) -> None:
    """Make ``module`` an instance of ``fast`` when it is exactly ``fast``'s plain base (not already fast, not some
    other subclass whose forward would be lost)."""
    if type(module) is fast.__mro__[1]:
        module.__class__ = fast


def accelerate(model: M, device: str | torch.device | None = None) -> M:
    """Swap the CPU fast paths into ``model`` (a tokenizer, or any module holding its CNN / ViT parts), in place;
    returns it. ``device``: where the model will run; a GPU leaves the model plain (its fast paths are CPU-only).
    ``None``: decided per call from the inputs' device, so a model moved to a GPU later still runs PyTorch's own
    forward there. Parameters, buffers and state-dict keys are unchanged."""
    if device is not None and torch.device(device).type != "cpu":
        return model
    for module in list(model.modules()):
        for parent, children in _FAST_CHILDREN.items():
            if isinstance(module, parent):
                for name, fast in children.items():
                    _swap(getattr(module, name), fast)
        fast = _FAST_MODULES.get(type(module))
        if fast is not None:
            _swap(module, fast)
    return model
