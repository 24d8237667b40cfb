"""VQLoss: the GigaTok tokenizer training objective (the original's tokenizer_image/vq/vq_loss.py).

Step convention
---------------
Every ``step`` argument is the trainer's **0-based count of completed iterations** (``train_steps``, s). The
spec's 1-based iteration index is t = step + 1, and every threshold is applied to t exactly as the original:

* auxiliary terms (shortcut reconstruction x̂_d, feature reconstruction) while t < aux_loss_end
  -> ``aux_active(step)`` = step + 1 < aux_loss_end (pass it as the model's ``rec_loss`` flag);
* discriminator training and the generator adversarial term for t >= disc_start
  -> ``disc_active(step)`` = step + 1 >= disc_start;
* entropy term zeroed for t >= entropy_loss_end (if set); generator update for t >= gen_start (``gen_active``);
* LeCam: regulariser for t > disc_start, EMA decay used from t >= disc_start + 1000.

Generator loss
--------------
L_G = w_rec (rec + rec_d) + w_p (p + p_d) + λ w_d(t) (g_adv + g_adv_d) + (vq + commit + entropy) + f
      + proj_weight · proj

with rec = mean (x - x̂)^2 ('l2') or mean |x - x̂| ('l1'); p = batch mean of LPIPS-VGG (train-mode dropout as the
original, see perceptual.py); g_adv = hinge / non-saturating generator loss on D(x̂) (DiffAug'd for dinodisc);
w_d(t) = disc_weight · [t >= disc_start]; λ = 1 unless ``disc_adaptive_weight`` (then the VQGAN formula, which needs
``last_layer``); the ``_d`` terms only if use_direct_rec_loss and t < aux_loss_end; f = the model's fea_rec_loss
while t < aux_loss_end; proj = -mean cos(student, DINOv2 teacher) (fp32). ``codebook_weight`` is read but NOT
applied, as the original (the quantiser's own β and entropy ratio are already inside its terms).

Discriminator loss
------------------
L_D = disc_weight · d_loss(D(sg x), D(sg x̂)) [+ disc_weight · d_loss(D(sg x), D(sg x̂_d)) while aux/direct]
[+ lecam_loss_weight · LeCam for t > disc_start]. PatchGAN: two separate forward calls (real first);
dinodisc: fake first, each through its own DiffAug draw.

Deviations from the original (all inert for the released configs): non-saturating losses are the textbook ones
(adversarial.py); with dinodisc the direct adversarial terms use x̂_d (the original scores x̂ twice); with
``perceptual_weight == 0`` LPIPS is not built or evaluated (the original computes it and multiplies by 0, so only
the logged ``perceptual_loss`` differs: 0 here); non-finite L_G raises FloatingPointError (the original raises
RuntimeError on NaN only); the discriminator is NOT frozen during the generator step (as the original: the trainer
must ``zero_grad`` the discriminator optimiser before the discriminator backward).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.settings import as_record, resolve, setting

from .adversarial import LeCamEMA, adaptive_weight, get_d_loss, get_g_loss, lecam_reg
from .diffaug import DiffAug
from .discriminators import build_discriminator
from .semantic import SemanticTeacher, alignment_loss


@dataclass
class LossSettings:
    """``loss.params`` of a tokenizer config: one field per key (type, default, meaning). The YAML sets them; unknown
    keys, missing required ones and wrong types are errors naming ``loss.params.<key>``."""
    disc_start: int = setting(None, "first iteration of the discriminator (and adversarial) terms",
                                     flags=(), required=True)
    disc_weight: float = setting(None, "weight of the adversarial generator term", flags=(), required=True)
    disc_type: str = setting(None, "patchgan or dinodisc", flags=(), required=True)
    disc_loss: str = setting(None, "discriminator loss (hinge, vanilla, non-saturating)", flags=(),
                                    required=True)
    gen_adv_loss: str = setting(None, "generator adversarial loss (hinge, non-saturating)", flags=(),
                                       required=True)
    perceptual_weight: float = setting(None, "weight of the LPIPS term", flags=(), required=True)
    reconstruction_weight: float = setting(None, "weight of the pixel term", flags=(), required=True)
    reconstruction_loss: str = setting(None, "l1 or l2", flags=(), required=True)
    disc_dim: int = setting(64, "PatchGAN width", flags=())
    disc_num_layers: int = setting(3, "PatchGAN depth", flags=())
    kw: int = setting(4, "PatchGAN kernel size", flags=())
    norm: str = setting("batch", "PatchGAN normalisation", flags=())
    blur_ds: bool = setting(False, "blurred downsampling in the discriminator", flags=())
    image_size: int = setting(256, "image size (sizes only the original's StyleGAN discriminator)", flags=())
    perceptual_model: str = setting("vgg", "LPIPS trunk", flags=())
    codebook_weight: float = setting(1.0, "stored, never applied (as the original)", flags=())
    aux_loss_end: int = setting(0, "last iteration of the auxiliary (direct) reconstruction terms", flags=())
    use_direct_rec_loss: bool = setting(False, "also train the direct (pre-quantisation) reconstruction", flags=())
    entropy_loss_end: int | None = setting(None, "last iteration of the entropy loss (None: always)", flags=())
    gen_start: int = setting(0, "first iteration of the generator update", flags=())
    proj_weight: float = setting(0.5, "weight of the semantic-regularisation term", flags=())
    lecam: bool = setting(False, "LeCam regularisation of the discriminator", flags=())
    lecam_loss_weight: float = setting(0.001, "weight of the LeCam term", flags=())
    lecam_ema_decay: float = setting(0.99, "decay of the LeCam EMAs", flags=())
    gamma: int = setting(15, "R1/R2 weight of the r3gan loss (not implemented)", flags=())
    resnet_perceptual: bool = setting(False, "never read (as the original)", flags=())
    disc_adaptive_weight: bool = setting(False, "VQGAN's adaptive weight of the adversarial term", flags=())
    teacher_image_size: int = setting(224, "input size of the semantic teacher", flags=())
    lpips_train_dropout: bool = setting(True, "LPIPS follows train()/eval() (its dropout is on in training, as "
                                              "the original)", flags=())


GEN_LOG_KEYS = ("rec_loss", "direct_rec_loss", "perceptual_loss", "direct_p_loss", "vq_loss", "commit_loss",
                "entropy_loss", "feature_rec_loss", "codebook_usage", "generator_adv_loss",
                "direct_generator_adv_loss", "disc_adaptive_weight", "disc_weight", "proj_loss", "proj_loss_weighted",
                "generator_loss")
DISC_LOG_KEYS = ("discriminator_adv_loss", "d_d_adversarial_loss", "lecam_loss", "disc_weight", "logits_real",
                 "logits_fake", "direct_logits_fake", "discriminator_loss")


class VQLoss(nn.Module):
    """See the module docstring. ``params`` = ``cfg.loss.params`` as a plain dict.

    ``pretrained=False`` builds a random LPIPS VGG trunk and a random DINO-discriminator backbone (tests, offline).
    ``lpips_vgg_path``: local LPIPS linear-head file or torchvision VGG16 weights (see perceptual.py).
    ``dino_disc_weights``: local DINO ViT-S/16 weights for the dinodisc backbone.

    Attributes used by the trainer: ``discriminator`` (its parameters go to the discriminator optimiser; it may be
    replaced by a DDP wrapper of itself), ``lecam_ema`` (None unless lecam).
    """

    def __init__(self, params: Mapping, distill_loss: bool = False, teacher: nn.Module | None = None,
                 pretrained: bool = True, lpips_vgg_path: str | None = None, dino_disc_weights: str | None = None):
        super().__init__()
        p = as_record(params if isinstance(params, LossSettings) else
                      resolve(LossSettings, None, dict(params), source="loss.params"))
        if distill_loss and teacher is None:
            raise ValueError("distill_loss=True needs a teacher (SemanticTeacher)")
        self.params = p
        self.disc_start = int(p["disc_start"])
        self.disc_weight = float(p["disc_weight"])
        self.disc_type = p["disc_type"]
        self.aux_loss_end = int(p["aux_loss_end"])
        self.entropy_loss_end = None if p["entropy_loss_end"] is None else int(p["entropy_loss_end"])
        self.gen_start = int(p["gen_start"])
        self.use_direct_rec_loss = bool(p["use_direct_rec_loss"])
        self.rec_weight = float(p["reconstruction_weight"])
        self.perceptual_weight = float(p["perceptual_weight"])
        self.codebook_weight = float(p["codebook_weight"])  # stored, never applied (as the original)
        self.proj_weight = float(p["proj_weight"])
        self.use_adaptive_weight = bool(p["disc_adaptive_weight"])

        if p["reconstruction_loss"] == "l2":
            self.rec_fn = F.mse_loss
        elif p["reconstruction_loss"] == "l1":
            self.rec_fn = F.l1_loss
        else:
            raise ValueError(f"loss.params.reconstruction_loss must be 'l2' or 'l1', got {p['reconstruction_loss']!r}")
        if p["perceptual_model"] != "vgg":
            raise ValueError(f"loss.params.perceptual_model must be 'vgg' (LPIPS), got {p['perceptual_model']!r}")
        self.perceptual = None
        if self.perceptual_weight != 0:
            from .perceptual import LPIPSLoss
            self.perceptual = LPIPSLoss(pretrained=pretrained, weights_path=lpips_vgg_path,
                                        train_dropout=bool(p["lpips_train_dropout"]))

        self.d_loss_fn = get_d_loss(p["disc_loss"])
        self.g_loss_fn = get_g_loss(p["gen_adv_loss"])
        self.discriminator = build_discriminator(p, pretrained=pretrained, dino_weights=dino_disc_weights)
        self.diffaug = DiffAug(prob=1.0, cutout=0.2) if self.disc_type == "dinodisc" else None
        self.lecam_weight = float(p["lecam_loss_weight"])
        self.lecam_ema = (LeCamEMA(init=1000.0, decay=float(p["lecam_ema_decay"]), start=self.disc_start + 1000)
                          if p["lecam"] else None)

        self.distill_loss = bool(distill_loss)
        self.teacher = teacher if self.distill_loss else None

    # ----- schedule -------------------------------------------------------------------------------------------
    def aux_active(self, step: int) -> bool:
        """Model ``rec_loss`` flag: t < aux_loss_end with t = step + 1."""
        return step + 1 < self.aux_loss_end

    def disc_active(self, step: int) -> bool:
        """Discriminator trained / generator adversarial term on: t >= disc_start with t = step + 1."""
        return step + 1 >= self.disc_start

    def gen_active(self, step: int) -> bool:
        return step + 1 >= self.gen_start

    def direct_active(self, step: int) -> bool:
        return self.use_direct_rec_loss and self.aux_active(step)

    def disc_weight_at(self, step: int) -> float:
        return self.disc_weight if self.disc_active(step) else 0.0

    def _disc(self, x: torch.Tensor) -> torch.Tensor:
        if self.diffaug is not None:
            x = self.diffaug(x)
        return self.discriminator(x.contiguous())

    # ----- generator ------------------------------------------------------------------------------------------
    def generator_loss(self, outputs, images: torch.Tensor, step: int,
                       last_layer: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """L_G for the model's train-mode output ``([dec, dir_dec], [quantiser_losses, fea_rec_loss][, inner])``.

        ``images`` in [-1, 1]. ``last_layer``: the generator's last weight, needed only with disc_adaptive_weight.
        Returns (L_G, logs) with the spec 2.8 names (weighted as the original logs them; ``proj_loss`` unweighted,
        ``proj_loss_weighted`` = proj_weight · proj). Raises FloatingPointError if L_G is NaN/inf.
        """
        (dec, dir_dec), (qlosses, fea_rec_loss) = outputs[0], outputs[1]
        inner_feat = outputs[2] if len(outputs) > 2 else None
        direct = self.direct_active(step)
        if direct and dir_dec is None:
            raise ValueError(f"use_direct_rec_loss at step {step} (t={step + 1} < aux_loss_end={self.aux_loss_end}) "
                             "needs the shortcut reconstruction: call the model with rec_loss=loss.aux_active(step)")
        if qlosses[0] is None:
            raise ValueError("quantiser losses are None: the model must be in train mode")
        x = images.contiguous()
        zero = x.new_zeros((), dtype=torch.float32)

        rec = self.rec_fn(x, dec.contiguous())
        rec_d = self.rec_fn(x, dir_dec.contiguous()) if direct else zero
        if self.perceptual is not None:
            p = self.perceptual(x, dec).mean()
            p_d = self.perceptual(x, dir_dec).mean() if direct else zero
        else:
            p, p_d = zero, zero

        w_d = self.disc_weight_at(step)
        g_adv, g_adv_d = zero, zero
        lam = 1.0
        if self.disc_active(step):
            g_adv = self.g_loss_fn(self._disc(dec))
            if direct:
                g_adv_d = self.g_loss_fn(self._disc(dir_dec))
            if self.use_adaptive_weight:
                if last_layer is None:
                    raise ValueError("disc_adaptive_weight=True needs generator_loss(..., last_layer=<weight>)")
                nll = self.rec_weight * (rec + rec_d) + self.perceptual_weight * p
                lam = adaptive_weight(nll, g_adv, last_layer)

        terms = list(qlosses[:-1])  # [vq, commit, entropy(, ...)]; the last entry is the usage statistic
        if self.entropy_loss_end is not None and step + 1 >= self.entropy_loss_end:
            terms[2] = 0.0
        vq_l, commit_l, ent_l, usage = terms[0], terms[1], terms[2], qlosses[-1]
        cb = sum(terms)  # weight 1: codebook_weight is NOT applied (as the original)
        f = fea_rec_loss if self.aux_active(step) else 0.0

        proj = zero
        if self.distill_loss:
            if inner_feat is None:
                raise ValueError("distill_loss=True needs the model's inner features: call it with ret_inner_feat=True")
            with torch.no_grad():
                teacher_feat = self.teacher(x)
            proj = alignment_loss(inner_feat, teacher_feat)

        adv_w = lam * w_d
        loss = (self.rec_weight * (rec + rec_d) + self.perceptual_weight * (p + p_d)
                + adv_w * (g_adv + g_adv_d) + cb + f + self.proj_weight * proj)

        values = [self.rec_weight * rec, self.rec_weight * rec_d, self.perceptual_weight * p,
                  self.perceptual_weight * p_d, vq_l, commit_l, ent_l, f, usage, adv_w * g_adv, adv_w * g_adv_d,
                  lam, w_d, proj, self.proj_weight * proj, loss]
        logs = _to_floats(GEN_LOG_KEYS, values, x.device)
        if not torch.isfinite(torch.tensor(logs["generator_loss"])):
            parts = ", ".join(f"{k}: {v:.4g}" for k, v in logs.items())
            raise FloatingPointError(f"non-finite generator loss at step {step} (t={step + 1}): {parts}"
                                     + _nan_inputs(x, dec))
        return loss, logs

    # ----- discriminator --------------------------------------------------------------------------------------
    def discriminator_loss(self, images: torch.Tensor, reconstructions: torch.Tensor, step: int,
                           direct_reconstructions: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """L_D on detached inputs, or (None, {}) before disc_start. Reconstructions are detached here."""
        if not self.disc_active(step):
            return None, {}
        t = step + 1
        x = images.detach().contiguous()
        xr = reconstructions.detach().contiguous()
        direct = self.direct_active(step) and direct_reconstructions is not None
        if self.disc_type == "dinodisc":
            logits_fake = self._disc(xr)
            logits_real = self._disc(x)
        else:
            logits_real = self._disc(x)
            logits_fake = self._disc(xr)
        logits_fake_d = self._disc(direct_reconstructions.detach().contiguous()) if direct else None

        zero = x.new_zeros((), dtype=torch.float32)
        w = self.disc_weight
        if self.lecam_ema is not None:
            self.lecam_ema.update(logits_real.detach().mean().item(), logits_fake.detach().mean().item(), t)
        d_adv = w * self.d_loss_fn(logits_real, logits_fake)
        d_adv_d = zero
        if direct:
            if self.lecam_ema is not None:
                self.lecam_ema.update(logits_real.detach().mean().item(), logits_fake_d.detach().mean().item(), t)
            d_adv_d = w * self.d_loss_fn(logits_real, logits_fake_d)
        lecam = zero
        if self.lecam_ema is not None and t > self.disc_start:
            lecam = self.lecam_weight * lecam_reg(logits_real, logits_fake, self.lecam_ema)
        loss = d_adv + d_adv_d + lecam

        values = [d_adv, d_adv_d, lecam, w, logits_real.detach().mean(), logits_fake.detach().mean(),
                  logits_fake_d.detach().mean() if direct else 0.0, loss]
        return loss, _to_floats(DISC_LOG_KEYS, values, x.device)


def _to_floats(keys, values, device) -> dict[str, float]:
    """One device->host transfer for all logged values."""
    stacked = torch.stack([torch.as_tensor(v, device=device).detach().float().reshape(()) for v in values])
    return dict(zip(keys, stacked.tolist(), strict=True))


def _nan_inputs(x: torch.Tensor, dec: torch.Tensor) -> str:
    notes = []
    if not torch.isfinite(x).all():
        notes.append("input images contain NaN/inf")
    if not torch.isfinite(dec).all():
        notes.append("reconstructions contain NaN/inf")
    return ("; " + "; ".join(notes)) if notes else ""


def build_loss(cfg, pretrained: bool = True, device="cpu", teacher_weights: str | None = None,
               lpips_vgg_path: str | None = None, dino_disc_weights: str | None = None) -> VQLoss:
    """VQLoss from a full tokenizer config: ``cfg.loss.params``, ``cfg.trainer.distill_loss`` / ``distill_model``.

    The teacher (if distill_loss) is a SemanticTeacher at ``loss.params.teacher_image_size`` (default 224).
    """
    from utils.config import to_plain

    params = dict(to_plain(cfg.loss.params))
    trainer = cfg.get("trainer") or {}
    distill = bool(trainer.get("distill_loss", False))
    teacher = None
    if distill:
        teacher = SemanticTeacher(trainer.get("distill_model", "dinov2-vit-b"), pretrained=pretrained,
                                  weights=teacher_weights,
                                  image_size=int(params.get("teacher_image_size", LossSettings.teacher_image_size)))
    loss = VQLoss(params, distill_loss=distill, teacher=teacher, pretrained=pretrained,
                  lpips_vgg_path=lpips_vgg_path, dino_disc_weights=dino_disc_weights)
    return loss.to(device)
