"""Differentiable augmentation for the DINO discriminator: DiffAug(prob=1.0, cutout=0.2) (StyleGAN-T recipe).

As the original's tokenizer/tokenizer_image/diffaug.py. Input cast to fp32. One ``torch.rand(3)`` on the CPU generator
decides translation / colour / cutout (each applied when <= prob), then ``torch.rand(7, B, 1, 1)`` on the image's
device gives the per-sample parameters:

1. translation by integer shifts in [-d, d], d = round(0.125 * size), reading zeros outside the image;
2. colour: brightness +(r2 - 0.5); saturation (x - mean_c) * 2 r3 + mean_c;
   contrast (x - mean_chw)(r4 + 0.5) + mean_chw;
3. cutout: a square of side round(0.2 * size) zeroed around a random centre (clamped to the image).

Every operation is differentiable with respect to the image. The warm-up blur of the original is hard-coded off
(``fade_blur_schedule = 0``) and not implemented. Random numbers: draw order and generators as the original, so a
fixed ``torch.manual_seed`` reproduces the augmentation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class DiffAug:
    def __init__(self, prob: float = 1.0, cutout: float = 0.2, translation: float = 0.125):
        self.prob, self.cutout, self.translation = abs(prob), cutout, translation
        self.use_cutout = prob > 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.prob < 1e-6:
            return x
        do_trans, do_color, do_cut = (torch.rand(3) <= self.prob).tolist()
        b, _, h, w = x.shape
        dev = x.device
        r = torch.rand(7, b, 1, 1, device=dev) if (do_trans or do_color or do_cut) else None
        if do_trans:
            x = self._translate(x, r, h, w)
        if do_color:
            x = x + (r[2].unsqueeze(-1) - 0.5)
            mean_c = x.mean(dim=1, keepdim=True)
            x = (x - mean_c) * (2 * r[3].unsqueeze(-1)) + mean_c
            mean_all = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean_all) * (r[4].unsqueeze(-1) + 0.5) + mean_all
        if self.use_cutout and do_cut:
            x = self._cutout(x, r, h, w)
        return x

    def _translate(self, x, r, h, w):
        b, dev = x.shape[0], x.device
        dh, dw = round(h * self.translation), round(w * self.translation)
        th = (r[0] * (2 * dh + 1)).floor().long() - dh  # [B,1,1]
        tw = (r[1] * (2 * dw + 1)).floor().long() - dw
        gb, gh, gw = torch.meshgrid(torch.arange(b, device=dev), torch.arange(h, device=dev),
                                    torch.arange(w, device=dev), indexing="ij")
        gh = (gh + th + 1).clamp(0, h + 1)
        gw = (gw + tw + 1).clamp(0, w + 1)
        padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)
        return padded[gb, gh, gw].permute(0, 3, 1, 2).contiguous()

    def _cutout(self, x, r, h, w):
        b, dev = x.shape[0], x.device
        ch, cw = round(h * self.cutout), round(w * self.cutout)
        oh = (r[5] * (h + (1 - ch % 2))).floor().long()
        ow = (r[6] * (w + (1 - cw % 2))).floor().long()
        gb, gh, gw = torch.meshgrid(torch.arange(b, device=dev), torch.arange(ch, device=dev),
                                    torch.arange(cw, device=dev), indexing="ij")
        gh = (gh + oh - ch // 2).clamp(0, h - 1)
        gw = (gw + ow - cw // 2).clamp(0, w - 1)
        mask = torch.ones(b, h, w, dtype=x.dtype, device=dev)
        mask[gb, gh, gw] = 0
        return x * mask.unsqueeze(1)
