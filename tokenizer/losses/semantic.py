"""Semantic regularisation: the frozen DINOv2 teacher and the cosine alignment loss (as the original).

Teacher: timm ``vit_{s,b,l}_patch14_dinov2`` (DINOv2 without registers, the same network and weights as the
original's ``torch.hub.load('facebookresearch/dinov2', 'dinov2_vitb14')``). Built at ``image_size`` (224) so that
timm resamples the 37x37 position table once, bicubic with antialias, to the 16x16 grid at load time — the same
call the original makes (``resample_abs_pos_embed``). Weights: the HF hub (timm default) on a user's machine, a
local file (``weights=``; timm or original DINOv2 key layout) offline, or random (``pretrained=False``, tests).

Preprocessing (order as the original, REPA style): u = ((x + 1)/2 - mean)/std (ImageNet), THEN bicubic resize
(no antialias, align_corners False) to ``image_size``. Output: final-LayerNorm patch tokens (CLS dropped)
[B, (image_size/14)^2, C], fp32.

Precision: on CUDA the teacher runs under fp16 autocast as the original (``amp_dtype``; pass torch.bfloat16 or
None to change); its output is cast to fp32 and the alignment loss is computed in fp32 with autocast disabled, so
neither side's fp16 values can overflow in the normalisation.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

TEACHERS = {
    "dinov2-vit-s": "vit_small_patch14_dinov2.lvd142m",
    "dinov2-vit-b": "vit_base_patch14_dinov2.lvd142m",
    "dinov2-vit-l": "vit_large_patch14_dinov2.lvd142m",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SemanticTeacher(nn.Module):
    """Frozen DINOv2 teacher; ``forward(images in [-1, 1]) -> [B, N, C]`` patch tokens after the final norm."""

    def __init__(self, model_name: str = "dinov2-vit-b", pretrained: bool = True, weights: str | None = None,
                 image_size: int = 224, amp_dtype: torch.dtype | None = torch.float16):
        super().__init__()
        import timm

        if model_name not in TEACHERS:
            raise ValueError(f"trainer.distill_model must be one of {list(TEACHERS)} for this reimplementation, "
                             f"got {model_name!r}")
        if image_size % 14:
            raise ValueError(f"teacher image size must be a multiple of 14, got {image_size}")
        kwargs = dict(num_classes=0, img_size=image_size)
        if weights is not None:
            kwargs["pretrained_cfg_overlay"] = dict(file=weights)
        self.encoder = timm.create_model(TEACHERS[model_name], pretrained=pretrained or weights is not None,
                                         **kwargs)
        self.image_size, self.amp_dtype = image_size, amp_dtype
        self.embed_dim = self.encoder.embed_dim
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    @property
    def grid_size(self) -> int:
        return self.image_size // 14

    def train(self, mode: bool = True):  # always eval (no dropout anyway; keeps it out of train() cascades)
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        u = ((images.float() + 1) / 2 - self.mean) / self.std
        return F.interpolate(u, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        u = self.preprocess(images)
        use_amp = self.amp_dtype is not None and u.device.type == "cuda"
        with torch.autocast(device_type=u.device.type, dtype=self.amp_dtype or torch.float32, enabled=use_amp):
            tokens = self.encoder.forward_features(u)
        return tokens[:, self.encoder.num_prefix_tokens:].float()


def alignment_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """proj = mean over batch and tokens of -cos(student_token, teacher_token); computed in fp32, autocast off.

    ``student``/``teacher``: [B, N, C] with equal shapes (raises ValueError naming both shapes otherwise).
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"semantic regularisation: student features {tuple(student.shape)} and teacher features "
            f"{tuple(teacher.shape)} differ. The decoder's distill grid must equal the teacher's patch grid "
            f"(teacher input size / 14 per side): set loss.params.teacher_image_size = 14 * sqrt(N_student) "
            f"(e.g. 112 for an 8x8 latent grid, 224 for 16x16), and model out_inner_dim to the teacher width.")
    with torch.autocast(device_type=student.device.type, enabled=False):
        s = F.normalize(student.float(), dim=-1)
        t = F.normalize(teacher.float(), dim=-1)
        return -(s * t).sum(dim=-1).mean()
