"""GigaTok tokenizer training losses: VQLoss (pixel + LPIPS + adversarial + quantiser + aux + semantic terms),
the PatchGAN and DINO discriminators, DiffAug and the DINOv2 semantic teacher."""
from .semantic import SemanticTeacher
from .vq_loss import VQLoss, build_loss

__all__ = ["VQLoss", "build_loss", "SemanticTeacher"]
