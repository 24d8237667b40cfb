"""Class-conditional LlamaGen-style GPT, as used by the released GigaTok AR checkpoints.

Architecture (the original's ``gpt_1d.Transformer`` with its default flags):

* input = [class embedding ; image-token embeddings] + learned absolute position table (row 0 = class slot);
* pre-norm blocks: ``h = x + Attn(RMSNorm(x))``, ``out = h + FFN(RMSNorm(h))`` with a fused ``wqkv``
  projection, causal scaled-dot-product attention and a SwiGLU FFN ``w2(silu(w1 x) * w3 x)``;
* final RMSNorm and an untied output head; logits are returned in float32.

The class table has ``num_classes + 1`` rows; the last row is the null class used for classifier-free
guidance (and for label dropout in training).

State-dict keys and shapes equal the original's exactly, so released checkpoints load with ``strict=True``.

``gpt_2d=True`` builds the original's other GPT (``autoregressive/models/gpt.py`` there, ``--gpt-2d``), used for the
paper's 1D-vs-2D tokenizer comparison: the same blocks, but no position table; instead 2D rotary embeddings over the
token grid (sqrt(block_size) squared) rotate queries and keys (the class slot gets a zero table row, so its q and k
are zero, as the original). Its keys are the 1D model's minus ``positional_embedding``.
Unlike the original, the KV cache lives in non-persistent buffers: a model that has sampled keeps the same
state-dict keys, and the teacher-forced forward (``input_pos=None``) keeps working while a cache exists.

This file is the architecture and its plain PyTorch forward only (``nn.Linear``, masked SDPA over the cache, as the
original). The decode speed tricks (small-row and packed CPU products, attention over the filled prefix, the native
CPU kernels) are a separate layer, ``autoregressive/models/fast_decode.py``, which the sampling entry points
(``generate``, ``StaticDecoder``) install for their duration; a model that only trains never runs them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.pretrained import PretrainedMixin

__all__ = ["ModelArgs", "Transformer", "GPT_models", "find_multiple", "precompute_freqs_cis_2d"]


def find_multiple(n: int, k: int) -> int:
    """Round ``n`` up to a multiple of ``k``."""
    return n if n % k == 0 else n + k - (n % k)


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: Optional[int] = None
    multiple_of: int = 256
    ffn_dim_multiplier: Optional[float] = None
    norm_eps: float = 1e-5
    initializer_range: float = 0.02

    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0

    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    model_type: str = "c2i"
    vocab_size: int = 16384
    cls_token_num: int = 1
    block_size: int = 256

    use_qk_norm: bool = False
    # The original's 2D GPT (GPT_models[name](gpt_2d=True)): 2D RoPE over the token grid, no learned position table.
    gpt_2d: bool = False
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        if self.model_type != "c2i":
            raise NotImplementedError(f"model_type={self.model_type!r}: only class-conditional 'c2i' is implemented")
        if self.cls_token_num != 1:
            raise ValueError(f"cls_token_num must be 1 for c2i models (got {self.cls_token_num})")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.dim % self.n_head != 0:
            raise ValueError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.n_head % self.n_kv_head != 0:
            raise ValueError(f"n_head {self.n_head} is not divisible by n_kv_head {self.n_kv_head}")
        if self.gpt_2d:
            grid = math.isqrt(self.block_size)
            if grid * grid != self.block_size:
                raise ValueError(f"the 2D GPT needs a square token grid; block_size {self.block_size} is not a square")
            if self.head_dim % 4:
                raise ValueError(f"the 2D GPT needs head_dim divisible by 4, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, cast back to the input dtype, then scaled by the weight."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


def precompute_freqs_cis_2d(grid_size: int, head_dim: int, base: float = 10000.0,
                            cls_token_num: int = 1) -> torch.Tensor:
    """(cos, sin) table [cls_token_num + grid^2, head_dim / 2, 2] of the original's 2D RoPE.

    Half of each head's pairs rotate with the row y, half with the column x of a token (row-major index y * g + x),
    at frequencies base^(-2k / (head_dim / 2)); the class slots get zero rows.
    """
    half = head_dim // 2
    cpu = torch.device("cpu")  # explicit: also when the model is built under a meta-device context
    freqs = 1.0 / (base ** (torch.arange(0, half, 2, device=cpu)[: half // 2].float() / half))
    angles = torch.outer(torch.arange(grid_size, dtype=torch.float32, device=cpu), freqs)  # [g, half / 2]
    grid = torch.cat([angles[:, None, :].expand(-1, grid_size, -1),          # row y
                      angles[None, :, :].expand(grid_size, -1, -1)], dim=-1)  # column x
    table = torch.stack([torch.cos(grid), torch.sin(grid)], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(cls_token_num, half, 2, device=cpu), table])


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x_2i, x_2i+1) of ``x`` [B, L, H, head_dim] by the table rows [L, head_dim / 2, 2]
    (in float32, cast back), as the original."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    rot = freqs_cis.view(1, pairs.size(1), 1, pairs.size(3), 2)
    out = torch.stack([pairs[..., 0] * rot[..., 0] - pairs[..., 1] * rot[..., 1],
                       pairs[..., 1] * rot[..., 0] + pairs[..., 0] * rot[..., 1]], dim=-1)
    return out.flatten(3).type_as(x)


class LabelEmbedder(nn.Module):
    """Class table with one extra null row (index ``num_classes``); drops labels to null in training."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels).unsqueeze(1)  # [B, 1, D]


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        hidden = args.ffn_hidden
        self.w1 = nn.Linear(args.dim, hidden, bias=False)
        self.w3 = nn.Linear(args.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, args.dim, bias=False)
        self.ffn_dropout = nn.Dropout(args.ffn_dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class KVCache(nn.Module):
    """Per-block key/value cache, [batch, kv_heads, seq, head_dim]; buffers are not part of the state dict."""

    def __init__(self, batch: int, seq: int, n_kv_head: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str | None = None):
        super().__init__()
        shape = (batch, n_kv_head, seq, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        b = k.shape[0]
        k_out, v_out = self.k_cache[:b], self.v_cache[:b]
        # index_copy_ writes the same values as the original's k_out[:, :, input_pos] = k, but its CPU kernel
        # costs ~7 us where the advanced-indexing assignment opens a parallel region (~70 us with 2 threads)
        k_out.index_copy_(2, input_pos, k.to(k_out.dtype))
        v_out.index_copy_(2, input_pos, v.to(v_out.dtype))
        return k_out, v_out


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dim = args.dim
        self.n_head = args.n_head
        self.n_kv_head = args.n_kv_head
        self.head_dim = args.head_dim
        kv_dim = self.n_kv_head * self.head_dim
        self.wqkv = nn.Linear(args.dim, args.dim + 2 * kv_dim, bias=False)
        self.wo = nn.Linear(args.dim, args.dim, bias=False)
        if args.use_qk_norm:
            self.q_norm = nn.LayerNorm(self.head_dim)
            self.k_norm = nn.LayerNorm(self.head_dim)
        else:
            self.q_norm = self.k_norm = None
        self.attn_dropout_p = args.attn_dropout_p
        self.resid_dropout = nn.Dropout(args.resid_dropout_p)
        self.kv_cache: Optional[KVCache] = None

    def forward(self, x: torch.Tensor, input_pos: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, freqs_cis: Optional[torch.Tensor] = None) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        kv_dim = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([self.dim, kv_dim, kv_dim], dim=-1)
        q = q.view(bsz, seqlen, self.n_head, self.head_dim)
        k = k.view(bsz, seqlen, self.n_kv_head, self.head_dim)
        v = v.view(bsz, seqlen, self.n_kv_head, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if freqs_cis is not None:
            q, k = apply_rotary_emb(q, freqs_cis), apply_rotary_emb(k, freqs_cis)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if input_pos is None:
            out = self.attend(q, k, v, mask, causal=mask is None)
        else:
            if self.kv_cache is None:
                raise RuntimeError("input_pos was given but no KV cache is set up; call setup_caches() first")
            k, v = self.kv_cache.update(input_pos, k, v)
            out = self.attend_cached(q, k, v, mask)
        return self.resid_dropout(self.wo(out))

    def attend_cached(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The new queries over the whole cache under ``mask``, as the original. The seam where the decode speed layer
        (autoregressive/models/fast_decode.py) attends to the filled prefix only."""
        return self.attend(q, k, v, mask, causal=mask is None)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
               causal: bool) -> torch.Tensor:
        """Scaled-dot-product attention of ``q`` [B, H, L, hd] over ``k``, ``v`` [B, kv_heads, S, hd] -> [B, L, dim]."""
        if self.n_kv_head != self.n_head:
            rep = self.n_head // self.n_kv_head
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        dropout = self.attn_dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], self.dim)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval or when the rate is 0)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, drop_path: float):
        super().__init__()
        # Registration order fixes the state-dict order: attention, feed_forward, attention_norm, ffn_norm.
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, input_pos: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, freqs_cis: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = x + self.drop_path(self.attention(self.attention_norm(x), input_pos, mask, freqs_cis))
        return h + self.drop_path(self.feed_forward(self.ffn_norm(h)))


class Transformer(PretrainedMixin, nn.Module):
    """The c2i GPT. ``forward(idx, cond_idx, input_pos=None, targets=None) -> (logits, loss)``.

    * Teacher-forced (``input_pos`` None): ``cond_idx`` [B] class ids (``num_classes`` = null) and ``idx`` [B, n]
      image tokens (or None); returns float32 logits [B, n + 1, vocab]; position p predicts token p.
      With ``targets`` [B, n + 1], ``loss`` is the mean cross-entropy.
    * Cached inference (``input_pos`` given, after :meth:`setup_caches`): ``idx`` None is the prefill of the
      class slot (``input_pos`` = [0]); otherwise ``idx`` [B, L] are tokens at positions ``input_pos`` [L].
      Attention then runs over the whole masked cache, as in the original.
    """

    pretrained_kind = "gpt"

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.config = args
        self.vocab_size = args.vocab_size
        self.num_classes = args.num_classes
        self.block_size = args.block_size
        self.cls_token_num = args.cls_token_num
        # Registration order fixes the state-dict order of the original.
        if args.gpt_2d:
            self.positional_embedding = None
            # not a buffer: it is not in the original's state dict, and a meta-built model must not lose it
            self._rope_table = precompute_freqs_cis_2d(math.isqrt(args.block_size), args.head_dim, args.rope_base,
                                                       args.cls_token_num)
        else:
            self.positional_embedding = nn.Parameter(torch.empty(args.block_size + args.cls_token_num, args.dim))
            self._rope_table = None
        self.cls_embedding = LabelEmbedder(args.num_classes, args.dim, args.class_dropout_prob)
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.tok_dropout = nn.Dropout(args.token_dropout_p)
        n = args.n_layer
        rates = [args.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]  # linear ramp
        self.layers = nn.ModuleList(TransformerBlock(args, r) for r in rates)
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)

        self.max_batch_size = -1
        self.max_seq_length = -1
        self.causal_mask: Optional[torch.Tensor] = None
        self.initialize_weights()

    # ----------------------------------------------------------------- set-up
    def initialize_weights(self) -> None:
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
        nn.init.zeros_(self.output.weight)
        if self.positional_embedding is not None:
            with torch.no_grad():
                self.positional_embedding.normal_().mul_(self.config.dim ** -0.5)

    @property
    def num_positions(self) -> int:
        return self.block_size + self.cls_token_num

    def _rope(self, rows, device: torch.device) -> Optional[torch.Tensor]:
        if self._rope_table is None:
            return None
        if self._rope_table.device != device:  # once: CUDA decoding indexes it with a device tensor, no host sync
            with torch.inference_mode(False):  # a normal tensor even when first moved while sampling
                self._rope_table = self._rope_table.to(device)
        return self._rope_table[rows]

    def setup_caches(self, max_batch_size: int, max_seq_length: int, dtype: Optional[torch.dtype] = None) -> None:
        """Allocate zeroed KV caches of ``max_seq_length`` rounded up to a multiple of 8 and the causal mask."""
        seq = find_multiple(max_seq_length, 8)
        if seq > self.num_positions + 7:
            raise ValueError(f"max_seq_length {max_seq_length} exceeds the position table "
                             f"({self.num_positions} positions)")
        dtype = dtype or self.tok_embeddings.weight.dtype
        device = self.tok_embeddings.weight.device
        self.max_batch_size, self.max_seq_length = max_batch_size, seq
        for layer in self.layers:
            attn = layer.attention
            attn.kv_cache = KVCache(max_batch_size, seq, attn.n_kv_head, attn.head_dim, dtype, device)
        self.causal_mask = torch.tril(torch.ones(seq, seq, dtype=torch.bool, device=device))

    def clear_caches(self) -> None:
        """Drop the KV caches (frees memory; the state dict never contains them)."""
        for layer in self.layers:
            layer.attention.kv_cache = None
        self.causal_mask = None
        self.max_batch_size = self.max_seq_length = -1

    # ---------------------------------------------------------------- helpers
    def check_class_ids(self, cond_idx: torch.Tensor, allow_null: bool = True) -> None:
        """Raise ValueError naming the class ids outside [0, num_classes] (or [0, num_classes) without null)."""
        if torch.compiler.is_compiling():  # data-dependent check; generate() checks before compiling code runs
            return
        upper = self.num_classes + (1 if allow_null else 0)
        bad = (cond_idx < 0) | (cond_idx >= upper)
        if bool(bad.any()):
            ids = sorted(set(cond_idx[bad].tolist()))
            raise ValueError(
                f"class ids {ids[:20]}{' ...' if len(ids) > 20 else ''} are outside [0, {upper}) "
                f"(the model has {self.num_classes} classes" + (f"; {self.num_classes} is the null class)"
                                                                  if allow_null else ")"))

    # ---------------------------------------------------------------- forward
    def forward(self, idx: Optional[torch.Tensor], cond_idx: Optional[torch.Tensor],
                input_pos: Optional[torch.Tensor] = None, targets: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, valid: Optional[torch.Tensor] = None,
                ret_inner_feat_layer: Optional[int] = None):
        if input_pos is None:
            if cond_idx is None:
                raise ValueError("the teacher-forced forward needs cond_idx (class ids, [B])")
            self.check_class_ids(cond_idx)
            x = self.cls_embedding(cond_idx)[:, : self.cls_token_num]
            if idx is not None:
                if idx.shape[1] + self.cls_token_num > self.num_positions:
                    raise ValueError(f"{idx.shape[1]} tokens exceed block_size {self.block_size}")
                x = torch.cat([x, self.tok_embeddings(idx)], dim=1)
            if self.positional_embedding is not None:
                x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
            x = self.tok_dropout(x)
            attn_mask = mask
            freqs = self._rope(slice(0, x.shape[1]), x.device)
        else:
            if self.causal_mask is None:
                raise RuntimeError("input_pos was given but no KV cache is set up; call setup_caches() first")
            if idx is None:
                if cond_idx is None:
                    raise ValueError("the prefill step needs cond_idx")
                self.check_class_ids(cond_idx)
                x = self.cls_embedding(cond_idx)[:, : self.cls_token_num]
            else:
                x = self.tok_embeddings(idx)  # the previous token (the original's 2D model wrongly re-embeds the class)
            if self.positional_embedding is not None:
                x = x + self.positional_embedding[input_pos].to(x.dtype)
            x = self.tok_dropout(x)
            attn_mask = self.causal_mask[None, None, input_pos] if mask is None else mask
            freqs = self._rope(input_pos, x.device)

        for i, layer in enumerate(self.layers):
            x = layer(x, input_pos, attn_mask, freqs)
            if ret_inner_feat_layer is not None and i + 1 == ret_inner_feat_layer:
                return x.detach().clone()

        logits = self.output(self.norm(x)).float()
        if self.training:
            logits = logits[:, self.cls_token_num - 1:].contiguous()

        loss = None
        if targets is not None:
            flat = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
            if valid is not None:
                w = valid.reshape(-1).to(flat.dtype)
                loss = (flat * w).sum() / w.sum().clamp_min(1)
            else:
                loss = flat.mean()
        return logits, loss

    def pretrained_config(self) -> dict:
        """``gpt_model`` (the preset with this width and depth) and every other model argument: what
        ``autoregressive.load_gpt`` needs to rebuild the model (``save_pretrained`` writes it as config.json)."""
        c = self.config
        preset = next((name for name, size in PRESET_SIZES.items() if size == (c.dim, c.n_layer, c.n_head)), None)
        if preset is None:
            raise ValueError(f"no GPT preset has dim={c.dim}, n_layer={c.n_layer}, n_head={c.n_head}; "
                             f"save_pretrained needs one of {sorted(PRESET_SIZES)}")
        return {"gpt_model": preset, **{f.name: getattr(c, f.name) for f in fields(ModelArgs)
                                        if f.name not in ("dim", "n_layer", "n_head")}}

    def get_fsdp_wrap_module_list(self) -> list:
        return list(self.layers)


# ---------------------------------------------------------------- presets
PRESET_SIZES: dict[str, tuple[int, int, int]] = {}  # preset name -> (dim, n_layer, n_head)


# The original's model arguments that are not ModelArgs fields: its variants no released checkpoint uses (accepted by
# the builders only when off, so the original's call forms and stored configs still build) and its kernel switch
# (no effect on weights or results here; any value).
UNIMPLEMENTED_VARIANTS = ("rope", "use_adaLN", "use_simple_adaLN")
INERT_ARGS = ("use_flash_attn",)


def _builder(dim: int, n_layer: int, n_head: int):
    def build(**kwargs) -> Transformer:
        for flag in UNIMPLEMENTED_VARIANTS:
            if kwargs.pop(flag, False):
                raise NotImplementedError(
                    f"{flag}=True is not implemented: the released GigaTok GPTs use learned absolute positions "
                    "without RoPE or adaLN")
        for name in INERT_ARGS:
            kwargs.pop(name, None)
        names = {f.name for f in fields(ModelArgs)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown GPT arguments {unknown}; allowed: {sorted(names)}")
        return Transformer(ModelArgs(dim=dim, n_layer=n_layer, n_head=n_head, **kwargs))
    build.size = (dim, n_layer, n_head)
    return build


GPT_B = _builder(768, 12, 12)        # 111M
GPT_L = _builder(1024, 24, 16)       # 343M
GPT_XL = _builder(1280, 36, 20)      # 775M
GPT_XXL = _builder(1536, 48, 24)     # 1.4B
GPT_XXXL = _builder(2560, 48, 40)    # 3.9B
GPT_1B = _builder(2048, 22, 32)      # 1.2B
GPT_3B = _builder(3200, 24, 32)      # 3.1B
GPT_7B = _builder(4096, 32, 32)      # 6.6B
# Not in the original: a few-layer model for tests and quick starts (no released weights).
GPT_tiny = _builder(64, 2, 4)

GPT_models = {
    "GPT-B": GPT_B, "GPT-L": GPT_L, "GPT-XL": GPT_XL, "GPT-XXL": GPT_XXL, "GPT-XXXL": GPT_XXXL,
    "GPT-1B": GPT_1B, "GPT-3B": GPT_3B, "GPT-7B": GPT_7B,
    "GPT-tiny": GPT_tiny,  # not in the original
}
PRESET_SIZES.update({name: build.size for name, build in GPT_models.items()})

