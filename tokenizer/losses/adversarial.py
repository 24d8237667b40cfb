"""Adversarial loss functions, the LeCam regulariser and the adaptive discriminator weight.

Discriminator losses return the *unweighted* value (``disc_weight`` is applied by VQLoss).
Formulas (the original's vq_loss.py):

* hinge D:   0.5 * (mean relu(1 - l_r) + mean relu(1 + l_f))
* vanilla D: 0.5 * (mean softplus(-l_r) + mean softplus(l_f))
* non-saturating D: identical value to vanilla (binary cross-entropy with targets 1 for real, 0 for fake).
* hinge G:   -mean l_f
* non-saturating G: mean softplus(-l_f)   (= BCE(l_f, 1))

Deliberate difference: the original passes the arguments of ``binary_cross_entropy_with_logits`` in swapped
order for the two non-saturating variants, which makes them linear in the logits; here they are the textbook
losses. No released config uses them (all hinge). The original's vanilla / non-saturating
discriminator losses would also crash when called (they do not accept the ``ema``/``iter`` arguments VQLoss
passes); here they work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

D_LOSSES = ("hinge", "vanilla", "non-saturating")
G_LOSSES = ("hinge", "non-saturating")


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def non_saturating_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    real = F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
    fake = F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
    return 0.5 * (real + fake)


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def non_saturating_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))


def get_d_loss(name: str):
    table = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss, "non-saturating": non_saturating_d_loss}
    if name not in table:
        raise ValueError(f"loss.params.disc_loss must be one of {list(table)}, got {name!r} "
                         "(r3gan is not implemented)")
    return table[name]


def get_g_loss(name: str):
    table = {"hinge": hinge_g_loss, "non-saturating": non_saturating_g_loss}
    if name not in table:
        raise ValueError(f"loss.params.gen_adv_loss must be one of {list(table)}, got {name!r} "
                         "(r3gan is not implemented)")
    return table[name]


class LeCamEMA:
    """EMAs of the batch-mean real/fake logits for the LeCam regulariser (Tseng et al. 2021), as the original.

    Initial value 1000; ``decay`` (0.99) is used only once ``t >= start`` (the original's start is
    disc_start + 1000); before that the EMA is a plain copy of the latest value. Updated on every discriminator
    loss evaluation BEFORE the regulariser reads it. Python floats (not part of any state_dict, not
    checkpointed — as the original).
    """

    def __init__(self, init: float = 1000.0, decay: float = 0.99, start: int = 0):
        self.decay, self.start = decay, start
        self.real, self.fake = init, init

    def update(self, mean_real: float, mean_fake: float, t: int) -> None:
        d = self.decay if t >= self.start else 0.0
        self.fake = self.fake * d + mean_fake * (1 - d)
        self.real = self.real * d + mean_real * (1 - d)

    def state_dict(self) -> dict:
        return {"real": self.real, "fake": self.fake}

    def load_state_dict(self, state: dict) -> None:
        self.real, self.fake = float(state["real"]), float(state["fake"])


def lecam_reg(logits_real: torch.Tensor, logits_fake: torch.Tensor, ema: LeCamEMA) -> torch.Tensor:
    """mean(relu(l_r - ema_fake)^2) + mean(relu(ema_real - l_f)^2)."""
    return F.relu(logits_real - ema.fake).pow(2).mean() + F.relu(ema.real - logits_fake).pow(2).mean()


def adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """lambda = clamp(||grad_W nll|| / (||grad_W g|| + 1e-4), 0, 1e4), detached (taming-transformers VQGAN)."""
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
    return torch.clamp(weight, 0.0, 1e4).detach()
