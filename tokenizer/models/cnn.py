"""CNN encoder and decoder of the GigaTok hybrid tokenizer (VQGAN-style ResNet blocks).

The decoder uses MAGVIT-v2-style adaptive GroupNorm conditioned on its own input and depth-to-space
upsampling. Key names follow the released checkpoints (``conv_blocks.{i}.res.{j}``, ``adaptive.{k}`` ...).

Speed (same maths, float rounding only): on CPU the encoder and decoder run their high-resolution levels (at least
``CL_MIN_PIXELS`` pixels) in channels-last memory format, where oneDNN's 3x3 convolutions are up to ~30% faster; the
low-resolution levels stay NCHW, where both layouts convolve alike and channels-last would only add a copy of each
weight per call. ``channels_last`` on each module: ``None`` = on CPU only, ``True``/``False`` to force. When no
gradient is recorded the activation, residual add and adaptive-norm affine run in place, so that fewer large tensors
are allocated (each one page-faults afresh on CPU). Inputs and outputs keep the caller's layout.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import cpu_kernels
from utils.cpu_kernels import WINOGRAD_CHANNELS


def group_norm(channels: int, affine: bool = True) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=affine)


def _no_grad_for(t: torch.Tensor) -> bool:
    """True when autograd records nothing for ``t``, so a fresh intermediate may be overwritten in place."""
    return not (torch.is_grad_enabled() and t.requires_grad)


def _norm_silu(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``silu(norm(x))``; in place on the norm's fresh output when nothing is recorded (same values, one less
    allocation)."""
    h = norm(x)
    return F.silu(h, inplace=_no_grad_for(h))


CL_MIN_PIXELS = 64 * 64  # levels with at least this many pixels run channels-last (when enabled)


class Conv3x3(nn.Conv2d):
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
                and x.dtype == torch.float32 and x.dim() == 4
                and self.in_channels in WINOGRAD_CHANNELS[:3] and self.out_channels % 16 == 0
                and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0 and x.shape[-2] * x.shape[-1] >= CL_MIN_PIXELS
                and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
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


def _layout(flag: bool | None, h: torch.Tensor) -> torch.Tensor:
    """``h`` in the memory format of its level (a no-op when it already is; untouched when channels-last is off)."""
    if not (h.device.type == "cpu" if flag is None else flag):
        return h
    if h.shape[-2] * h.shape[-1] >= CL_MIN_PIXELS:
        return h.contiguous(memory_format=torch.channels_last)
    return h.contiguous()


class ResnetBlock(nn.Module):
    """GN -> swish -> conv3x3, twice, plus a 1x1 shortcut when the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = Conv3x3(in_channels, out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv3x3(out_channels, out_channels)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_norm_silu(self.norm1, x))
        h = self.conv2(self.dropout(_norm_silu(self.norm2, h)))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        # in place into the conv's fresh output: add needs neither operand for its backward, so this is autograd-safe
        return h.add_(shortcut)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one pixel on the right and bottom (asymmetric, as in VQGAN)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def depth_to_space_dcr(x: torch.Tensor, block: int = 2) -> torch.Tensor:
    """Depth-to-space in DCR order: out[c, h*b+i, w*b+j] = in[(i*b+j)*C + c, h, w].

    This is not ``F.pixel_shuffle`` (CRD order); the released decoder weights assume DCR. A channels-last input gives
    a channels-last output (one copy in NHWC order instead of a round trip through NCHW).
    """
    b, c4, h, w = x.shape
    c = c4 // (block * block)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        nhwc = x.permute(0, 2, 3, 1).reshape(b, h, w, block, block, c).permute(0, 1, 3, 2, 4, 5)
        return nhwc.reshape(b, h * block, w * block, c).permute(0, 3, 1, 2)
    x = x.view(b, block, block, c, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, c, h * block, w * block)


class D2SUpsampler(nn.Module):
    """3x3 conv to 4x channels followed by a 2x depth-to-space."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = Conv3x3(channels, channels * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space_dcr(self.conv1(x), 2)


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without affine, re-scaled and shifted from per-channel statistics of a style map.

    scale = gamma(std(style)), shift = beta(mean(style)); the std uses the unbiased variance (as the
    released weights were trained with) and there is no ``1 +`` on the scale.
    """

    def __init__(self, z_channels: int, in_filters: int):
        super().__init__()
        self.gn = group_norm(in_filters, affine=False)
        self.gamma = nn.Linear(z_channels, in_filters)
        self.beta = nn.Linear(z_channels, in_filters)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        b, c = style.shape[:2]
        flat = style.reshape(b, c, -1)
        std = torch.sqrt(flat.var(dim=-1, unbiased=True) + 1e-6)
        mean = flat.mean(dim=-1)
        scale = self.gamma(std)[:, :, None, None]
        shift = self.beta(mean)[:, :, None, None]
        h = self.gn(x)
        if _no_grad_for(h) and _no_grad_for(scale) and _no_grad_for(shift):
            return h.mul_(scale).add_(shift)  # the same two roundings, in the norm's fresh output
        return h * scale + shift


class _Level(nn.Module):
    """Container for one resolution level; exists so the state-dict keys read ``conv_blocks.{i}.res.{j}``."""

    def __init__(self, blocks: Sequence[nn.Module], resample: nn.Module | None, resample_name: str):
        super().__init__()
        self.res = nn.ModuleList(blocks)
        if resample is not None:
            self.add_module(resample_name, resample)


class Encoder(nn.Module):
    """Image [B,3,H,W] -> features [B, z_channels, H/2^(L-1), W/2^(L-1)]."""

    def __init__(self, in_channels: int = 3, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, z_channels: int = 256, dropout: float = 0.0):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        levels, block_in = [], ch
        for i, mult in enumerate(ch_mult):
            block_out = ch * mult
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
            down = Downsample(block_in) if i < len(ch_mult) - 1 else None
            levels.append(_Level(blocks, down, "downsample"))
        self.conv_blocks = nn.ModuleList(levels)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, dropout) for _ in range(2)])
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)
        self.channels_last: bool | None = None  # None: channels-last activations on CPU (see the module docstring)

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


class Decoder(nn.Module):
    """Features [B, z_channels, h, w] -> image [B, 3, h*2^(L-1), w*2^(L-1)], unclamped.

    ``conv_blocks.0`` is the lowest resolution. Each level is preceded by an adaptive GroupNorm that is
    conditioned on the decoder's input.
    """

    def __init__(self, z_channels: int = 256, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, out_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, dropout) for _ in range(2)])
        levels, adaptive = [], []
        for i_level in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[i_level]
            adaptive.append(AdaptiveGroupNorm(z_channels, block_in))
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
            up = D2SUpsampler(block_in) if i_level > 0 else None
            levels.append(_Level(blocks, up, "upsample"))
        self.conv_blocks = nn.ModuleList(levels)
        self.adaptive = nn.ModuleList(adaptive)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)
        self.channels_last: bool | None = None  # None: channels-last activations on CPU (see the module docstring)

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
