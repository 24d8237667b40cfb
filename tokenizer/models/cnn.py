"""CNN encoder and decoder of the GigaTok hybrid tokenizer (VQGAN-style ResNet blocks).

The decoder uses MAGVIT-v2-style adaptive GroupNorm conditioned on its own input and depth-to-space
upsampling. Key names follow the released checkpoints (``conv_blocks.{i}.res.{j}``, ``adaptive.{k}`` ...).

Architecture and the plain PyTorch forward only (NCHW, out-of-place). The CPU speed paths (channels-last levels,
Winograd 3x3 convolutions, in-place ops) are ``tokenizer/models/accelerate.py``, which swaps in subclasses of these
modules; ``build_tokenizer`` / ``load_tokenizer`` apply it by default.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def group_norm(channels: int, affine: bool = True) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=affine)


class ResnetBlock(nn.Module):
    """GN -> swish -> conv3x3, twice, plus a 1x1 shortcut when the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return h + shortcut


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one pixel on the right and bottom (asymmetric, as in VQGAN)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def depth_to_space_dcr(x: torch.Tensor, block: int = 2) -> torch.Tensor:
    """Depth-to-space in DCR order: out[c, h*b+i, w*b+j] = in[(i*b+j)*C + c, h, w].

    This is not ``F.pixel_shuffle`` (CRD order); the released decoder weights assume DCR.
    """
    b, c4, h, w = x.shape
    c = c4 // (block * block)
    x = x.view(b, block, block, c, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, c, h * block, w * block)


class D2SUpsampler(nn.Module):
    """3x3 conv to 4x channels followed by a 2x depth-to-space."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels * 4, 3, padding=1)

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

    def scale_shift(self, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel scale and shift [B, C, 1, 1] from the style's per-channel std and mean."""
        b, c = style.shape[:2]
        flat = style.reshape(b, c, -1)
        std = torch.sqrt(flat.var(dim=-1, unbiased=True) + 1e-6)
        mean = flat.mean(dim=-1)
        return self.gamma(std)[:, :, None, None], self.beta(mean)[:, :, None, None]

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_shift(style)
        return self.gn(x) * scale + shift


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            for block in level.res:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


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

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        style = z
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level, adaptive in zip(self.conv_blocks, self.adaptive, strict=True):
            h = adaptive(h, style)
            for block in level.res:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
