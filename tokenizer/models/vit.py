"""Transformer parts of the GigaTok tokenizer: Q-Former-style 2D->1D encoder, 1D->2D decoder, and 2D variants.

Tensors inside the transformer stacks are sequence-first ``(L, B, D)`` like ``nn.MultiheadAttention`` with
``batch_first=False``; the modules keep the original key names (``self_attn.in_proj_weight`` ...).

Architecture and the plain PyTorch forward only. The CPU inference fast path (oneDNN products for the linear layers
and attention projections) is ``tokenizer/models/accelerate.py``, which swaps in subclasses of ``nn.Linear`` /
``nn.MultiheadAttention``; ``build_tokenizer`` / ``load_tokenizer`` apply it by default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ViTSize:
    width: int
    layers: int
    heads: int


VIT_SIZES: dict[str, ViTSize] = {
    "micro": ViTSize(64, 2, 2),  # not in the original: for fast tests only
    "tiny": ViTSize(256, 4, 4),
    "small": ViTSize(512, 6, 8),
    "base": ViTSize(768, 12, 12),
    "large": ViTSize(1024, 24, 16),
    "xl": ViTSize(1280, 36, 20),
    "xxl": ViTSize(1536, 48, 24),
    "xxxl": ViTSize(2560, 48, 40),
}
MLP_RATIO = 4.0


def vit_size(name: str) -> ViTSize:
    if name not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {name!r}; choose one of {list(VIT_SIZES)}")
    return VIT_SIZES[name]


class TransformerDecoderLayer(nn.Module):
    """Pre-norm DETR-style layer: self-attention over queries, cross-attention to a memory, GELU MLP.

    Positional codes are added to queries and keys only, never to values; the memory is used raw.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = MLP_RATIO, dropout: float = 0.0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(width, heads, dropout=dropout)
        self.linear1 = nn.Linear(width, hidden)
        self.linear2 = nn.Linear(hidden, width)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.norm3 = nn.LayerNorm(width)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                query_pos: torch.Tensor) -> torch.Tensor:
        t = self.norm1(tgt)
        q = t + query_pos
        tgt = tgt + self.self_attn(q, q, t, need_weights=False)[0]
        t = self.norm2(tgt)
        tgt = tgt + self.multihead_attn(t + query_pos, memory + pos, memory, need_weights=False)[0]
        t = self.norm3(tgt)
        return tgt + self.linear2(F.gelu(self.linear1(t)))


class TransformerLayer(nn.Module):
    """Standard pre-norm ViT block (self-attention + GELU MLP), used by some 2D tokenizers."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = MLP_RATIO, dropout: float = 0.0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout)
        self.linear1 = nn.Linear(width, hidden)
        self.linear2 = nn.Linear(hidden, width)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.norm1(x)
        x = x + self.self_attn(t, t, t, need_weights=False)[0]
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


LAYER_TYPES = {"TransformerDecoderLayer": TransformerDecoderLayer, "TransformerLayer": TransformerLayer}


def _pos_table(tokens: int, width: int) -> nn.Parameter:
    return nn.Parameter(width ** -0.5 * torch.randn(tokens, 1, width))


def _grid_to_seq(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> (H*W, B, C) with token index h*W + w."""
    b, c = x.shape[:2]
    return x.reshape(b, c, -1).permute(2, 0, 1)


def _seq_to_grid(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(H*W, B, D) -> [B, D, H, W]."""
    return x.permute(1, 2, 0).reshape(x.shape[1], x.shape[2], h, w)


def _distill_head(width: int, out_dim: int) -> nn.Sequential:
    hidden = int(width * MLP_RATIO)
    return nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, out_dim))


def multi_level_pool(grid: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Coarse-to-fine initial 1D queries from a [B, D, g, g] map -> [B, D, num_tokens].

    Group 0 and group 1 are both the global mean; group i >= 1 average-pools the map into
    2^(l//2) rows x 2^((l+1)//2) columns (l = i - 1), flattened row-major. The groups add up to
    ``num_tokens`` when it is a power of two equal to g*g.
    """
    g_h, g_w = grid.shape[-2:]
    n_level = round(math.log2(num_tokens))
    groups = []
    for i in range(n_level + 1):
        level = max(i - 1, 0)
        rows, cols = 2 ** (level // 2), 2 ** ((level + 1) // 2)
        if g_h % rows or g_w % cols:
            raise ValueError(f"multi-level query init cannot pool a {g_h}x{g_w} grid into {rows}x{cols}")
        pooled = F.avg_pool2d(grid, kernel_size=(g_h // rows, g_w // cols))
        groups.append(pooled.flatten(2))
    out = torch.cat(groups, dim=2)
    if out.shape[2] != num_tokens:
        raise ValueError(f"multi-level query init made {out.shape[2]} queries, expected {num_tokens}; "
                         "num_latent_tokens must equal the number of grid tokens and be a power of two")
    return out


class ViTEncoder(nn.Module):
    """2D->1D encoder: latent queries (multi-level pooled grid) cross-attend to the embedded grid tokens."""

    def __init__(self, size: str, grid_size: int, num_latent_tokens: int, token_size: int):
        super().__init__()
        cfg = vit_size(size)
        d = cfg.width
        self.grid_size, self.num_latent_tokens = grid_size, num_latent_tokens
        self.encoder_embed = nn.Linear(token_size, d)
        self.ln_pre = nn.LayerNorm(token_size)
        self.positional_embedding = _pos_table(grid_size ** 2, d)
        self.latent_token_positional_embedding = _pos_table(num_latent_tokens, d)
        self.global_proj = nn.Linear(d, d)
        self.transformer = nn.ModuleList([TransformerDecoderLayer(d, cfg.heads) for _ in range(cfg.layers)])
        self.ln_post = nn.LayerNorm(d)
        self.conv_out = nn.Conv2d(d, token_size, 1)

    def forward(self, s: torch.Tensor, return_feat: bool = False) -> torch.Tensor:
        b, _, h, w = s.shape
        x = self.encoder_embed(self.ln_pre(_grid_to_seq(s)))  # memory (HW, B, D)
        queries = multi_level_pool(_seq_to_grid(x, h, w), self.num_latent_tokens).permute(2, 0, 1)
        latent = self.global_proj(queries)
        for layer in self.transformer:
            latent = layer(latent, memory=x, pos=self.positional_embedding,
                           query_pos=self.latent_token_positional_embedding)
        feat = self.ln_post(latent).permute(1, 2, 0).unsqueeze(2)  # [B, D, 1, N]
        return feat if return_feat else self.conv_out(feat)


class ViTDecoder(nn.Module):
    """1D->2D decoder: grid queries (copies of 1D token 0) cross-attend to the embedded 1D tokens.

    After ``distill_depth`` layers the residual stream can be projected by ``distill_mlp`` to the
    semantic teacher's width (semantic regularisation).
    """

    def __init__(self, size: str, grid_size: int, num_latent_tokens: int, token_size: int,
                 distill_depth: int | None, out_inner_dim: int):
        super().__init__()
        cfg = vit_size(size)
        d = cfg.width
        self.grid_size, self.distill_depth = grid_size, distill_depth
        self.decoder_embed = nn.Linear(token_size, d)
        self.ln_pre = nn.LayerNorm(token_size)
        self.positional_embedding = _pos_table(grid_size ** 2, d)
        self.latent_token_positional_embedding = _pos_table(num_latent_tokens, d)
        self.transformer = nn.ModuleList([TransformerDecoderLayer(d, cfg.heads) for _ in range(cfg.layers)])
        self.ln_post = nn.LayerNorm(d)
        self.conv_out = nn.Conv2d(d, token_size, 3, padding=1)
        if distill_depth is not None:
            self.distill_mlp = _distill_head(d, out_inner_dim)

    def forward(self, z: torch.Tensor, ret_inner_feat: bool = False, return_feat: bool = False):
        x = self.decoder_embed(self.ln_pre(_grid_to_seq(z)))  # (N, B, D), N 1D tokens
        n = x.shape[0]
        latent = x[:1].expand(self.grid_size ** 2, -1, -1)
        pos = self.latent_token_positional_embedding[:n]
        inner = None
        for i, layer in enumerate(self.transformer):
            latent = layer(latent, memory=x, pos=pos, query_pos=self.positional_embedding)
            if i + 1 == self.distill_depth:
                if ret_inner_feat:
                    inner = self.distill_mlp(latent).permute(1, 0, 2)
                elif return_feat:
                    return None, latent.permute(1, 0, 2)
        out = self.conv_out(_seq_to_grid(self.ln_post(latent), self.grid_size, self.grid_size))
        return (out, inner) if ret_inner_feat else out


class _ViT2D(nn.Module):
    """Shared body of the 2D encoder/decoder: embed grid tokens, run a stack, map back to a grid."""

    def __init__(self, size: str, grid_size: int, token_size: int, layer_type: str, out_kernel: int,
                 embed_name: str):
        super().__init__()
        if layer_type not in LAYER_TYPES:
            raise ValueError(f"transformer_layer_type must be one of {list(LAYER_TYPES)}, got {layer_type!r}")
        cfg = vit_size(size)
        d = cfg.width
        self.grid_size, self.layer_type = grid_size, layer_type
        # Registered in the original's order (position table, input embedding, ln_pre, blocks, ln_post, conv_out):
        # the parameter order decides which tensor an original checkpoint's index-keyed optimiser state belongs to.
        self.positional_embedding = _pos_table(grid_size ** 2, d)
        self.add_module(embed_name, nn.Linear(token_size, d))
        self.ln_pre = nn.LayerNorm(token_size)
        self.transformer = nn.ModuleList([LAYER_TYPES[layer_type](d, cfg.heads) for _ in range(cfg.layers)])
        self.ln_post = nn.LayerNorm(d)
        self.conv_out = nn.Conv2d(d, token_size, out_kernel, padding=out_kernel // 2)

    def _run(self, x: torch.Tensor, stop_after: int | None = None, hook=None) -> torch.Tensor:
        pos = self.positional_embedding
        if self.layer_type == "TransformerLayer":
            x = x + pos
        for i, layer in enumerate(self.transformer):
            x = layer(x) if self.layer_type == "TransformerLayer" else layer(x, memory=x, pos=pos, query_pos=pos)
            if hook is not None and i + 1 == stop_after:
                hook(x)
        return x


class ViTEncoder2D(_ViT2D):
    """2D encoder: grid tokens stay a grid (no 1D bottleneck)."""

    def __init__(self, size: str, grid_size: int, token_size: int, layer_type: str):
        super().__init__(size, grid_size, token_size, layer_type, out_kernel=1, embed_name="encoder_embed")

    def forward(self, s: torch.Tensor, return_feat: bool = False) -> torch.Tensor:
        x = self._run(self.encoder_embed(self.ln_pre(_grid_to_seq(s))))
        feat = _seq_to_grid(self.ln_post(x), self.grid_size, self.grid_size)
        return feat if return_feat else self.conv_out(feat)


class ViTDecoder2D(_ViT2D):
    """2D decoder with the semantic-regularisation head after ``distill_depth`` layers."""

    def __init__(self, size: str, grid_size: int, token_size: int, layer_type: str,
                 distill_depth: int | None, out_inner_dim: int):
        super().__init__(size, grid_size, token_size, layer_type, out_kernel=3, embed_name="decoder_embed")
        self.distill_depth = distill_depth
        if distill_depth is not None:
            self.distill_mlp = _distill_head(vit_size(size).width, out_inner_dim)

    def forward(self, z: torch.Tensor, ret_inner_feat: bool = False):
        captured: list[torch.Tensor] = []
        hook = (lambda t: captured.append(self.distill_mlp(t).permute(1, 0, 2))) if ret_inner_feat else None
        x = self._run(self.decoder_embed(self.ln_pre(_grid_to_seq(z))), self.distill_depth, hook)
        out = self.conv_out(_seq_to_grid(self.ln_post(x), self.grid_size, self.grid_size))
        return (out, captured[0] if captured else None) if ret_inner_feat else out
