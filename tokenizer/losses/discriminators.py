"""Discriminators: PatchGAN (``disc_type: patchgan``) and the DINO discriminator (``disc_type: dinodisc``).

PatchGAN (the original's discriminator_patchgan.py): pix2pix NLayerDiscriminator with state_dict keys ``main.{i}.*``;
ndf 64, 3 layers, kw 4 -> 2,765,633 parameters, [B, 1, 30, 30] logits for 256x256 inputs.

DINO discriminator (the original's discriminator_dino.py): a frozen DINO (v1) ViT-S/16 backbone read out before the
blocks and after blocks 2, 5, 8, 11 (patch tokens + CLS token), each readout scored by a trainable head of
spectral-normalised 1-D convs with local batch norm; logits [B, 5 * 196]. The backbone is built with timm
(``vit_small_patch16_224.dino``, GELU tanh-approximation as the original's MLP) and, as the original, is NOT a
registered submodule: it is not in ``parameters()`` / ``state_dict()`` (checkpoints hold ``heads.*`` only) and stays
in eval mode; ``.to()`` / ``.cuda()`` do move it (the original hard-wires it to 'cuda').
"""
from __future__ import annotations

import math
import random

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------------------
# PatchGAN


class NLayerDiscriminator(nn.Module):
    """PatchGAN: conv(s2) -> LReLU, then n_layers convs (stride 2 except the last, stride 1) with BN, then conv->1."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, kw: int = 4, norm: str = "batch",
                 blur_ds: bool = False):
        super().__init__()
        if norm != "batch":
            raise ValueError(f"loss.params.norm must be 'batch' (the original's other branch cannot be built), "
                             f"got {norm!r}")
        if blur_ds:
            raise NotImplementedError("loss.params.blur_ds=True (BlurPool PatchGAN) is not implemented; "
                                      "no released config uses it")
        pad = 1
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kw, stride=2, padding=pad), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, kw, stride=stride, padding=pad, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, kw, stride=1, padding=pad))
        self.main = nn.Sequential(*layers)
        self.apply(_patchgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def _patchgan_init(m: nn.Module) -> None:
    # Conv weights N(0, 0.02); conv biases keep PyTorch's default init (NOT zeroed, as the original);
    # BatchNorm weight N(1, 0.02), bias 0.
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------------------------
# DINO discriminator

DINO_DISC_TIMM_NAME = "vit_small_patch16_224.dino"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SpectralConv1d(nn.Conv1d):
    """Conv1d with torch spectral norm (1 power iteration per training forward, dim 0, eps 1e-12)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        torch.nn.utils.spectral_norm(self, name="weight", n_power_iterations=1, dim=0, eps=1e-12)


class BatchNormLocal(nn.Module):
    """Batch norm over virtual groups of ``virtual_bs`` samples (fp32, biased variance, no running stats)."""

    def __init__(self, num_features: int, virtual_bs: int = 8, eps: float = 1e-6):
        super().__init__()
        self.virtual_bs, self.eps = virtual_bs, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.float()
        groups = math.ceil(shape[0] / self.virtual_bs)
        if shape[0] % groups:
            raise ValueError(f"BatchNormLocal: batch {shape[0]} is not divisible into {groups} groups "
                             f"(virtual batch {self.virtual_bs})")
        x = x.view(groups, -1, shape[-2], shape[-1])
        mean = x.mean(dim=(1, 3), keepdim=True)
        var = x.var(dim=(1, 3), keepdim=True, unbiased=False)
        x = (x - mean) / torch.sqrt(var + self.eps)
        x = x * self.weight[None, :, None] + self.bias[None, :, None]
        return x.view(shape)


class ResidualBlock(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.fn(x) + x) / math.sqrt(2)


def _head_block(channels: int, kernel_size: int, eps: float) -> nn.Sequential:
    return nn.Sequential(
        SpectralConv1d(channels, channels, kernel_size=kernel_size, padding=kernel_size // 2,
                       padding_mode="circular"),
        BatchNormLocal(channels, eps=eps),
        nn.LeakyReLU(0.2, inplace=True),
    )


def make_dino_head(channels: int = 384, ks: int = 9, eps: float = 1e-6) -> nn.Sequential:
    """Key layout ``{0: block(ks=1), 1: Residual(fn=block(ks)), 2: SpectralConv1d(C, 1)}`` as the original."""
    return nn.Sequential(_head_block(channels, 1, eps), ResidualBlock(_head_block(channels, ks, eps)),
                         SpectralConv1d(channels, 1, kernel_size=1, padding=0))


def build_dino_backbone(pretrained: bool = True, weights: str | None = None) -> nn.Module:
    """DINO v1 ViT-S/16 (timm), frozen. ``weights``: local file (timm or original DINO key layout)."""
    import timm

    model = timm.create_model(DINO_DISC_TIMM_NAME, pretrained=pretrained and weights is None, num_classes=0,
                              act_layer="gelu_tanh")
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("head")]
        if missing or unexpected:
            raise KeyError(f"DINO discriminator backbone {weights}: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():  # zero the key part of every qkv bias (as the original; attention output unchanged)
        for blk in model.blocks:
            c = blk.attn.qkv.bias.numel() // 3
            blk.attn.qkv.bias[c:2 * c].zero_()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class DinoDiscriminator(nn.Module):
    """DINO discriminator (DinoDisc(norm_type='bn')): frozen DINO ViT-S/16 + 5 trainable heads -> [B, 980]."""

    def __init__(self, pretrained: bool = True, weights: str | None = None, key_depths=(2, 5, 8, 11),
                 ks: int = 9, norm_eps: float = 1e-6, backbone: nn.Module | None = None):
        super().__init__()
        bb = backbone if backbone is not None else build_dino_backbone(pretrained, weights)
        self._backbone = (bb,)  # a tuple: not a submodule (not trained, not saved, not DDP-synchronised)
        self.key_depths = tuple(key_depths)
        self.img_size = bb.patch_embed.img_size[0]
        dim = bb.embed_dim
        self.heads = nn.ModuleList([make_dino_head(dim, ks, norm_eps) for _ in range(len(self.key_depths) + 1)])
        m, s = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("x_scale", (0.5 / s).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("x_shift", ((0.5 - m) / s).view(1, 3, 1, 1), persistent=False)

    @property
    def backbone(self) -> nn.Module:
        return self._backbone[0]

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._backbone[0]._apply(fn, *args, **kwargs)
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[-1,1] -> ImageNet-normalised, then (if larger than 224) random 224 crop w.p. 0.5 else area-resize;
        smaller inputs are bicubic-resized. fp32, autocast off. The crop/resize coin uses Python ``random``."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = self.x_scale * x.float() + self.x_shift
            h, w = x.shape[-2:]
            size = self.img_size
            if h > size and w > size and random.random() <= 0.5:
                top = int(torch.randint(0, h - size + 1, (1,)))
                left = int(torch.randint(0, w - size + 1, (1,)))
                x = x[..., top:top + size, left:left + size]
            else:  # (also at exactly 224: bicubic to the same size is the identity)
                x = F.interpolate(x, size=(size, size), mode="area" if h > size else "bicubic")
        return x

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The 5 readouts [B, C, N] (patch tokens + CLS token), in fp32."""
        bb = self.backbone
        x = self.preprocess(x)
        x = bb.patch_embed(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = torch.cat((bb.cls_token.expand(x.shape[0], -1, -1).float(), x.float()), dim=1)
            x = x + bb.pos_embed.float()
            acts = [(x[:, 1:] + x[:, :1]).transpose(1, 2)]
        for i, blk in enumerate(bb.blocks):
            x = blk(x)
            if i in self.key_depths:
                acts.append((x[:, 1:].float() + x[:, :1].float()).transpose(1, 2))
        return acts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return torch.cat([head(a).view(b, -1) for head, a in zip(self.heads, self.features(x), strict=True)], dim=1)


def build_discriminator(params, pretrained: bool = True, dino_weights: str | None = None) -> nn.Module:
    disc_type = params.get("disc_type", "patchgan")
    if disc_type == "patchgan":
        return NLayerDiscriminator(input_nc=3, ndf=params.get("disc_dim", 64),
                                   n_layers=params.get("disc_num_layers", 3), kw=params.get("kw", 4),
                                   norm=params.get("norm", "batch"), blur_ds=params.get("blur_ds", False))
    if disc_type == "dinodisc":
        return DinoDiscriminator(pretrained=pretrained, weights=dino_weights)
    raise ValueError(f"loss.params.disc_type must be 'patchgan' or 'dinodisc', got {disc_type!r} "
                     "(stylegan / patchgan_SeD / patchganv2 / patchvit are not implemented)")
