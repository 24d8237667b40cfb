"""GigaTok tokenizers: ``VQVitModelPlus`` (1D tokens) and ``VQVitModel2DPlus`` (2D tokens). Assembly only.

image -> CNN encoder -> ViT encoder -> quant_conv -> quantiser -> post_quant_conv -> ViT decoder -> CNN decoder.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.pretrained import PretrainedMixin

from .cnn import Decoder, Encoder
from .quantizer import VectorQuantizer
from .vit import ViTDecoder, ViTDecoder2D, ViTEncoder, ViTEncoder2D


@dataclass
class _CommonArgs:
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    encoder_ch_mult: list = field(default_factory=lambda: [1, 1, 2, 2, 4])
    decoder_ch_mult: list = field(default_factory=lambda: [1, 1, 2, 2, 4])
    model_size: str | None = None
    encoder_size: str | None = None
    decoder_size: str | None = None
    num_latent_tokens: int = 256
    z_channels: int = 256
    dropout_p: float = 0.0
    adaptive_gn: bool = True
    d2s_up: bool = True
    rot: bool = False
    use_attn: bool = False
    fea_rec_loss_type: str = "mse"
    fea_rec_loss_weight: float = 1.0
    distill_depth: int | None = None
    out_inner_dim: int = 768
    # Extensions (not in the original, whose values are hard-coded): needed for small/fast configs.
    image_size: int = 256
    cnn_ch: int = 128
    num_res_blocks: int = 2


@dataclass
class VQVitModelPlusArgs(_CommonArgs):
    multi_level_query_init: bool = True
    last_level_2d_query_init: bool = False
    multi_level_2d_query_init: bool = False
    use_qk_norm: bool = False


@dataclass
class VQVitModel2DPlusArgs(_CommonArgs):
    transformer_layer_type: str = "TransformerDecoderLayer"
    encoder_2d_distill: bool = False


# Options of the original that no released config turns on; asking for them is an error, not a silent no-op.
_UNSUPPORTED = {
    "use_attn": True, "adaptive_gn": False, "d2s_up": False, "multi_level_query_init": False,
    "last_level_2d_query_init": True, "multi_level_2d_query_init": True, "use_qk_norm": True,
    "encoder_2d_distill": True,
}


def _check_args(args: _CommonArgs) -> tuple[str, str]:
    for name, bad in _UNSUPPORTED.items():
        if hasattr(args, name) and getattr(args, name) == bad:
            raise ValueError(f"model.init_args.{name}={bad} is not supported (no released GigaTok model uses it)")
    if args.encoder_size or args.decoder_size:
        if args.model_size is not None:
            raise ValueError("set model.init_args.model_size to null when encoder_size/decoder_size are given")
        enc, dec = args.encoder_size, args.decoder_size
    else:
        enc = dec = args.model_size
    if enc is None or dec is None:
        raise ValueError("model.init_args needs encoder_size and decoder_size (or model_size)")
    if args.fea_rec_loss_type not in ("mse", "cosine"):
        raise ValueError(f"model.init_args.fea_rec_loss_type must be 'mse' or 'cosine', got {args.fea_rec_loss_type!r}")
    down = 2 ** (len(args.encoder_ch_mult) - 1)
    if args.image_size % down:
        raise ValueError(f"image_size {args.image_size} is not divisible by the encoder's downsampling {down}")
    if len(args.decoder_ch_mult) != len(args.encoder_ch_mult):
        raise ValueError("encoder_ch_mult and decoder_ch_mult must have the same length")
    return enc, dec


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal(0.02) Linear/Conv weights and zero biases; unit LayerNorms (the original's init)."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@functools.lru_cache(maxsize=1)
def _warn_2d_flags() -> None:
    warnings.warn("VQVitModel2DPlus.encode ignores return_cont_feat/return_fix_dim_feat, as the original does "
                  "(it then returns the quantised latent); use model.pre_quant_features(x) for the continuous "
                  "features.", stacklevel=3)


class _VQModelBase(PretrainedMixin, nn.Module):
    """Shared encode/decode/forward; subclasses build ``self.vit_encoder``/``self.vit_decoder`` aliases."""

    _IGNORES_FEATURE_FLAGS = False
    pretrained_kind = "tokenizer"
    # the config the model was built from (set by tokenizer.build_tokenizer), written by save_pretrained
    source_config: dict | None = None

    def pretrained_config(self) -> dict:
        """The tokenizer config that rebuilds this model: the one it was built from, else its model arguments."""
        if self.source_config is not None:
            return self.source_config
        return {"model": {"model_cls": type(self).__name__, "init_args": asdict(self.args)}}

    args: _CommonArgs
    token_grid: tuple[int, int]

    def _build(self, args: _CommonArgs, enc_name: str, dec_name: str, make_vits) -> None:
        self.args = args
        enc_size, dec_size = _check_args(args)
        self.grid_size = args.image_size // 2 ** (len(args.encoder_ch_mult) - 1)
        self.encoder = Encoder(ch=args.cnn_ch, ch_mult=args.encoder_ch_mult, num_res_blocks=args.num_res_blocks,
                               z_channels=args.z_channels, dropout=args.dropout_p)
        vit_enc, vit_dec = make_vits(enc_size, dec_size)
        self.add_module(enc_name, vit_enc)
        self.add_module(dec_name, vit_dec)
        self._vit_names = (enc_name, dec_name)
        self.decoder = Decoder(z_channels=args.z_channels, ch=args.cnn_ch, ch_mult=args.decoder_ch_mult,
                               num_res_blocks=args.num_res_blocks, dropout=args.dropout_p)
        self.apply(_init_weights)
        self.quantize = VectorQuantizer(args.codebook_size, args.codebook_embed_dim, args.commit_loss_beta,
                                        args.entropy_loss_ratio, args.codebook_l2_norm,
                                        args.codebook_show_usage, args.rot)
        self.quant_conv = nn.Conv2d(args.z_channels, args.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(args.codebook_embed_dim, args.z_channels, 1)

    @property
    def vit_encoder(self) -> nn.Module:
        return getattr(self, self._vit_names[0])

    @property
    def vit_decoder(self) -> nn.Module:
        return getattr(self, self._vit_names[1])

    @property
    def image_size(self) -> int:
        return self.args.image_size

    @property
    def codebook_size(self) -> int:
        return self.args.codebook_size

    @property
    def num_tokens(self) -> int:
        return self.token_grid[0] * self.token_grid[1]

    def latent_shape(self, batch: int) -> tuple[int, int, int, int]:
        """Shape of the quantised latent for ``batch`` images, as ``decode_code`` expects it."""
        return (batch, self.args.codebook_embed_dim, *self.token_grid)

    def _check_input(self, x: torch.Tensor) -> None:
        s = self.args.image_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2:] != (s, s):
            raise ValueError(f"tokenizer expects images of shape [B, 3, {s}, {s}] in [-1, 1], got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor, return_code: bool = True, return_feat: bool = False,
               return_cont_feat: bool = False, return_fix_dim_feat: bool = False):
        """Default: (quant, [vq, commit, entropy, usage], (None, None, indices [B*N])).

        ``return_code=False``: (quant, losses, CNN features). ``return_feat`` / ``return_cont_feat`` /
        ``return_fix_dim_feat``: (features, None, None) for ViT-encoder features before its output conv,
        the pre-quantisation (quant_conv) output, or the ViT-encoder output.
        """
        self._check_input(x)
        if self._IGNORES_FEATURE_FLAGS and (return_cont_feat or return_fix_dim_feat):
            _warn_2d_flags()
            return_cont_feat = return_fix_dim_feat = False
        s = self.encoder(x)
        if return_feat:
            return self.vit_encoder(s, return_feat=True), None, None
        h = self.vit_encoder(s)
        if return_fix_dim_feat:
            return h, None, None
        h = self.quant_conv(h)
        if return_cont_feat:
            return h, None, None
        quant, emb_loss, info = self.quantize(h)
        return (quant, emb_loss, info) if return_code else (quant, emb_loss, s)

    def encode_to_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> code indices, LongTensor [B, num_tokens] (row-major token order)."""
        _, _, info = self.encode(x)
        return info[2].reshape(x.shape[0], -1)

    def encoder_only(self) -> "_VQModelBase":
        """Drop the decoders (CNN pixel decoder and ViT decoder) to save memory when only codes are needed, as the
        original's AR trainer does; ``encode`` / ``encode_to_codes`` keep working, ``decode*`` no longer can."""
        for name in ("decoder", self._vit_names[1]):
            if isinstance(getattr(self, name, None), nn.Module):
                delattr(self, name)
        return self

    def pre_quant_features(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous quant_conv output before quantisation ([B, C, H, W]), for both 1D and 2D models."""
        self._check_input(x)
        return self.quant_conv(self.vit_encoder(self.encoder(x)))

    def _vit_decode(self, q: torch.Tensor, ret_inner_feat: bool, return_feat: bool):
        raise NotImplementedError

    def decode(self, quant: torch.Tensor, ret_inner_feat: bool = False, return_feat: bool = False):
        """quant -> (pixels, rec_spatial[, inner_feat]); ``return_feat``: (None, None, layer features)."""
        q = self.post_quant_conv(quant)
        out = self._vit_decode(q, ret_inner_feat, return_feat)
        if return_feat and not ret_inner_feat:
            return None, None, out
        if ret_inner_feat:
            rec_spatial, inner = out
            return self.decoder(rec_spatial), rec_spatial, inner
        return self.decoder(out), out

    def decode_code(self, indices: torch.Tensor, shape=None, channel_first: bool = True) -> torch.Tensor:
        """Code indices ([B*N] or [B, N]) -> images [B, 3, H, W] in about [-1, 1] (unclamped)."""
        if shape is None:
            shape = self.latent_shape(indices.shape[0] if indices.dim() == 2 else indices.numel() // self.num_tokens)
        if indices.numel() != shape[0] * shape[2] * shape[3]:
            raise ValueError(f"{indices.numel()} code indices do not fill a latent of shape {tuple(shape)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.args.codebook_size):
            raise ValueError(f"code indices must lie in [0, {self.args.codebook_size}), "
                             f"got [{int(indices.min())}, {int(indices.max())}]")
        return self.decode(self.quantize.get_codebook_entry(indices, shape, channel_first))[0]

    def forward(self, x: torch.Tensor, rec_loss: bool = True, ret_inner_feat: bool = False):
        """Eval: (reconstruction, [None, None, None, 0]).

        Train: ([dec, dir_dec], [quantiser losses, fea_rec_loss][, inner_feat]) where ``dir_dec`` is the
        CNN-only shortcut reconstruction and ``fea_rec_loss`` ties the ViT decoder output to the CNN encoder
        features (both only while ``rec_loss``).
        """
        quant, diff, spatial = self.encode(x, return_code=False)
        if ret_inner_feat:
            dec, rec_spatial, inner = self.decode(quant, ret_inner_feat=True)
        else:
            (dec, rec_spatial), inner = self.decode(quant), None
        if not self.training:
            return dec, diff
        if rec_loss:
            target = spatial.detach()
            if self.args.fea_rec_loss_type == "mse":
                fea = F.mse_loss(target, rec_spatial)
            else:
                fea = (1 - F.cosine_similarity(target, rec_spatial, dim=1)).mean()
            fea_rec_loss = self.args.fea_rec_loss_weight * fea
            dir_dec = self.decoder(spatial)
        else:
            fea_rec_loss, dir_dec = 0, None
        if ret_inner_feat:
            return [dec, dir_dec], [diff, fea_rec_loss], inner
        return [dec, dir_dec], [diff, fea_rec_loss]


class VQVitModelPlus(_VQModelBase):
    """1D tokenizer: the 16x16 CNN grid is summarised into ``num_latent_tokens`` 1D tokens."""

    def __init__(self, args: VQVitModelPlusArgs):
        super().__init__()
        grid = args.image_size // 2 ** (len(args.encoder_ch_mult) - 1)
        self.token_grid = (1, args.num_latent_tokens)

        def make(enc, dec):
            return (ViTEncoder(enc, grid, args.num_latent_tokens, args.z_channels),
                    ViTDecoder(dec, grid, args.num_latent_tokens, args.z_channels, args.distill_depth,
                               args.out_inner_dim))
        self._build(args, "s2to1encoder", "s1to2decoder", make)

    def _vit_decode(self, q, ret_inner_feat, return_feat):
        if return_feat and not ret_inner_feat:
            return self.s1to2decoder(q, return_feat=True)[1]
        return self.s1to2decoder(q, ret_inner_feat=ret_inner_feat)


class VQVitModel2DPlus(_VQModelBase):
    """2D tokenizer: tokens keep the CNN grid layout.

    As in the original, ``encode`` ignores ``return_cont_feat``/``return_fix_dim_feat`` (see
    ``pre_quant_features``); released outputs and parity vectors depend on that.
    """

    _IGNORES_FEATURE_FLAGS = True

    def __init__(self, args: VQVitModel2DPlusArgs):
        super().__init__()
        grid = args.image_size // 2 ** (len(args.encoder_ch_mult) - 1)
        self.token_grid = (grid, grid)

        def make(enc, dec):
            return (ViTEncoder2D(enc, grid, args.z_channels, args.transformer_layer_type),
                    ViTDecoder2D(dec, grid, args.z_channels, args.transformer_layer_type, args.distill_depth,
                                 args.out_inner_dim))
        self._build(args, "s2dencoder", "s2ddecoder", make)

    def _vit_decode(self, q, ret_inner_feat, return_feat):
        if return_feat and not ret_inner_feat:
            raise ValueError("return_feat is only available for the 1D tokenizer (VQVitModelPlus)")
        return self.s2ddecoder(q, ret_inner_feat=ret_inner_feat)


MODEL_CLASSES = {"VQVitModelPlus": (VQVitModelPlus, VQVitModelPlusArgs),
                 "VQVitModel2DPlus": (VQVitModel2DPlus, VQVitModel2DPlusArgs)}


def arg_names(model_cls: str) -> set[str]:
    return {f.name for f in fields(MODEL_CLASSES[model_cls][1])}
