"""LPIPS-VGG perceptual loss for training (with gradients), via the ``lpips`` package (as the original's lpips.py).

``lpips.LPIPS(net='vgg')`` is exactly the network the original uses: ScalingLayer, torchvision VGG16 features
tapped at relu1_2 ... relu5_3, unit-normalisation (eps 1e-10), squared difference, per-tap ``lin{k}`` =
Dropout(0.5) -> 1x1 conv (no bias), spatial mean, sum over taps. Its bundled ``weights/v0.1/vgg.pth`` is the
same file as the original's ``cache/vgg.pth`` (md5 d507d7349b931f0638a25a48a722f98a), key layout
``lin{k}.model.1.weight``.

Train-mode dropout quirk: in the original the LPIPS module follows the train()/eval() state
of the loss module, so Dropout(0.5) in front of each linear head is ACTIVE during training. Reproduced by default:
this wrapper simply follows the mode set by ``VQLoss.train()`` / ``.eval()`` (``train_dropout=True``). With
``train_dropout=False`` the LPIPS network is kept in eval mode always (deterministic loss; not the original).

Weights: ``pretrained=True`` loads the ImageNet VGG16 trunk through torchvision (download/cache on first use) and
the v0.1 linear heads bundled with the package. ``pretrained=False`` gives a random trunk (tests/offline) — the
linear heads are still the bundled calibrated ones. ``weights_path`` may point to a local file holding either
the linear heads (``lin*`` keys, like the original's cache/vgg.pth) or a torchvision VGG16 state_dict
(``features.*`` keys, for offline machines), detected by its keys.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn


class LPIPSLoss(nn.Module):
    def __init__(self, pretrained: bool = True, weights_path: str | None = None, train_dropout: bool = True):
        super().__init__()
        import lpips

        state = None
        if weights_path is not None:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        trunk_state = state if state is not None and any(k.startswith("features.") for k in state) else None
        head_state = state if state is not None and any(k.startswith("lin") for k in state) else None
        if state is not None and trunk_state is None and head_state is None:
            raise KeyError(f"{weights_path}: neither LPIPS linear heads (lin*) nor VGG16 (features.*) weights")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(pretrained|weights).*")
            self.net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=not pretrained or trunk_state is not None,
                                   verbose=False)
        if trunk_state is not None:
            self._load_trunk(trunk_state)
        if head_state is not None:
            missing = self.net.load_state_dict(head_state, strict=False).missing_keys
            lin_missing = [k for k in missing if k.startswith("lin")]
            if lin_missing:
                raise KeyError(f"{weights_path}: missing LPIPS head weights {lin_missing}")
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.train_dropout = train_dropout
        self.net.eval()

    def _load_trunk(self, state: dict) -> None:
        # lpips splits VGG16.features into slice1..5 keeping the original module indices as names.
        slices = [self.net.net.slice1, self.net.net.slice2, self.net.net.slice3, self.net.net.slice4,
                  self.net.net.slice5]
        with torch.no_grad():
            for sl in slices:
                for name, module in sl.named_children():
                    if isinstance(module, nn.Conv2d):
                        module.weight.copy_(state[f"features.{name}.weight"])
                        module.bias.copy_(state[f"features.{name}.bias"])

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.train_dropout:
            self.net.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS [B, 1, 1, 1] of x vs y (both in [-1, 1], not resized)."""
        return self.net(x.contiguous(), y.contiguous())
