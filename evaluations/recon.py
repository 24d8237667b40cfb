"""Reconstruction metrics as the original ``reconstruction_ddp.py`` computes them: PSNR, SSIM, LPIPS, rFID.

Images for PSNR/SSIM are NHWC (or HWC) float arrays/tensors in [0, 1]: in the original, the ground truth is
``(x + 1) / 2`` in float32 (not re-quantised) and the reconstruction is the saved uint8 image / 255.

* PSNR: ``skimage.metrics.peak_signal_noise_ratio(restored, gt)`` without ``data_range``. For float images skimage
  takes ``data_range = 1`` when the first argument is non-negative (2 otherwise), so PSNR = 10 log10(1 / MSE) with the
  MSE over all H*W*3 values (float32 differences, float64 mean).
* SSIM: ``structural_similarity(restored, gt, data_range=2.0, channel_axis=-1)``: per-channel SSIM with a 7x7 uniform
  window, sample covariance (N/(N-1), N = 49), K1 = 0.01, K2 = 0.03, averaged over the valid (border-cropped) region,
  then over channels. ``data_range=2.0`` is the original's quirk: the images are in [0, 1], so the stabilisers
  C1 = (0.01 * 2)^2 and C2 = (0.03 * 2)^2 are 4x too large, which pulls SSIM towards 1. ``faithful=True`` (default)
  reproduces it; ``faithful=False`` uses the correct ``data_range=1.0``.
* LPIPS: :class:`LPIPSMetric` wraps the ``lpips`` package (VGG16 trunk + the v0.1 linear heads it ships, the same
  weights as the original's taming-transformers copy). The original reports the mean of per-batch means.
* rFID: :func:`rfid`, the ADM evaluator run on a reference npz and the reconstructions' npz.

Both PSNR and SSIM are implemented here in torch (vectorised over the batch, any device) and checked against
scikit-image in the tests.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WIN = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_DATA_RANGE_ORIGINAL = 2.0   # the original's quirk for [0, 1] images
SSIM_DATA_RANGE_CORRECT = 1.0


def _as_nchw(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"{name}: expected HWC or NHWC images, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected float images in [0, 1], got dtype {t.dtype} (divide uint8 by 255)")
    return t.permute(0, 3, 1, 2)


def psnr(restored, gt, data_range: float | None = None) -> np.ndarray:
    """Per-image PSNR in dB (skimage semantics; ``data_range`` None = 1 for non-negative ``restored``, else 2)."""
    a, b = _as_nchw(restored, "restored"), _as_nchw(gt, "gt")
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: restored {tuple(a.shape)} vs gt {tuple(b.shape)}")
    a32, b32 = a.to(torch.float32), b.to(torch.float32)
    mse = ((a32 - b32) ** 2).flatten(1).to(torch.float64).mean(1)
    if data_range is None:
        mins = a32.flatten(1).amin(1).to(torch.float64)
        maxs = a32.flatten(1).amax(1)
        if bool((maxs > 1).any()) or bool((mins < -1).any()):
            raise ValueError("restored image has values outside [-1, 1]; pass data_range explicitly")
        dr = torch.where(mins >= 0, torch.ones_like(mins), torch.full_like(mins, 2.0))
    else:
        dr = torch.full_like(mse, float(data_range))
    with np.errstate(divide="ignore"):
        return (10 * np.log10((dr ** 2).cpu().numpy() / mse.cpu().numpy())).astype(np.float64)


def ssim(restored, gt, faithful: bool = True, data_range: float | None = None, win_size: int = SSIM_WIN
         ) -> np.ndarray:
    """Per-image SSIM as skimage's ``structural_similarity(..., channel_axis=-1)`` (uniform window, sample cov).

    ``data_range`` defaults to 2.0 when ``faithful`` (the original's call) and 1.0 otherwise. Computed in float64.
    """
    if data_range is None:
        data_range = SSIM_DATA_RANGE_ORIGINAL if faithful else SSIM_DATA_RANGE_CORRECT
    a, b = _as_nchw(restored, "restored"), _as_nchw(gt, "gt")
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: restored {tuple(a.shape)} vs gt {tuple(b.shape)}")
    if min(a.shape[-2:]) < win_size:
        raise ValueError(f"SSIM window {win_size} is larger than the image {tuple(a.shape[-2:])}")
    a, b = a.to(torch.float64), b.to(torch.float64)
    n, c = a.shape[:2]
    # uniform_filter + crop((win-1)//2) in skimage == the mean over every fully-inside window ("valid" box filter)
    stack = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    means = F.avg_pool2d(stack, win_size, stride=1)
    ux, uy, uxx, uyy, uxy = means.split(c, dim=1)
    npix = win_size * win_size
    cov_norm = npix / (npix - 1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(2, 3)).mean(dim=1).cpu().numpy()


# --------------------------------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _features_only_vgg(active: bool):
    """While ``lpips`` builds a randomly initialised trunk, give it only VGG16's conv ``features``.

    ``lpips`` keeps nothing but ``vgg16().features``; building the full torchvision model would also initialise the
    ~120M-parameter classifier it throws away (tens of seconds on a small CPU).
    """
    if not active:
        yield
        return
    import types

    import lpips.pretrained_networks as pn
    from torchvision.models.vgg import cfgs, make_layers
    original = pn.tv.vgg16
    pn.tv.vgg16 = lambda *args, **kwargs: types.SimpleNamespace(features=make_layers(cfgs["D"], batch_norm=False))
    try:
        yield
    finally:
        pn.tv.vgg16 = original


class LPIPSMetric:
    """LPIPS (VGG, v0.1) through the ``lpips`` package; inputs NCHW in [-1, 1].

    ``pretrained_backbone=True`` lets torchvision fetch its ImageNet VGG16 weights (network, cached by torch hub);
    ``vgg_weights_path`` loads a local torchvision ``vgg16`` state dict (``features.N.*`` keys) instead;
    ``pretrained_backbone=False`` without a path leaves the trunk random (tests only). The linear heads always come
    from the weights bundled with the package.
    """

    def __init__(self, device: str | torch.device | None = None, pretrained_backbone: bool = True,
                 vgg_weights_path: str | os.PathLike | None = None):
        import lpips

        from utils.distributed import pick_device
        self.device = pick_device(None if device is None else str(device))
        random_trunk = (not pretrained_backbone) or vgg_weights_path is not None
        if vgg_weights_path is not None and not Path(vgg_weights_path).is_file():
            raise MissingWeightsError(f"--lpips-vgg-path {vgg_weights_path}: no such file")
        try:
            with warnings.catch_warnings(), _features_only_vgg(random_trunk):
                warnings.simplefilter("ignore")  # torchvision's "pretrained is deprecated" notice
                self.model = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=random_trunk, verbose=False)
        except (OSError, RuntimeError) as exc:  # urllib's URLError is an OSError
            if random_trunk:
                raise
            raise MissingWeightsError(_vgg16_missing_message()) from exc
        if vgg_weights_path is not None:
            self._load_vgg(vgg_weights_path)
        self.model = self.model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.reset()

    def _load_vgg(self, path) -> None:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        net = self.model.net
        targets = {}
        for slice_name in ("slice1", "slice2", "slice3", "slice4", "slice5"):
            for idx, module in getattr(net, slice_name).named_children():
                if isinstance(module, torch.nn.Conv2d):
                    targets[f"features.{idx}.weight"] = module.weight
                    targets[f"features.{idx}.bias"] = module.bias
        missing = [k for k in targets if k not in sd]
        if missing:
            raise KeyError(f"VGG16 weights {str(path)!r} lack {missing[:4]} (expected a torchvision vgg16 state dict)")
        with torch.no_grad():
            for key, param in targets.items():
                if tuple(sd[key].shape) != tuple(param.shape):
                    raise ValueError(f"{key}: shape {tuple(sd[key].shape)} vs expected {tuple(param.shape)}")
                param.copy_(sd[key])

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS [N] for two NCHW batches in [-1, 1]."""
        return self.model(x.to(self.device, torch.float32), y.to(self.device, torch.float32)).flatten()

    def reset(self) -> None:
        self.batch_means: list[float] = []
        self.values: list[float] = []

    def update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        vals = self(x, y)
        self.batch_means.append(float(vals.mean()))
        self.values.extend(vals.cpu().tolist())
        return vals

    def compute(self, faithful: bool = True) -> float:
        """Mean of per-batch means (the original; a short last batch weighs more) or, unfaithful, the image mean."""
        if not self.values:
            raise ValueError("LPIPSMetric.compute() before any update()")
        return float(np.mean(self.batch_means) if faithful else np.mean(self.values))


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights a metric needs are neither cached nor downloadable (offline machine)."""


def _vgg16_missing_message() -> str:
    from torchvision.models import VGG16_Weights

    name = Path(VGG16_Weights.IMAGENET1K_V1.url).name
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return (f"LPIPS needs torchvision's VGG16 weights ({name}), which are not in {cache} and could not be downloaded.\n"
            f"Copy the file there, or give it with --lpips-vgg-path FILE, or leave out --lpips.")


# --------------------------------------------------------------------------------------------------------------------
# rFID
# --------------------------------------------------------------------------------------------------------------------

def rfid(ref_npz, recon_npz, return_all: bool = False, **kwargs):
    """rFID of reconstructions (``recon_npz``, arr_0 uint8 NHWC) against a reference npz (e.g. ``val_imagenet.npz``).

    Runs :func:`evaluations.c2i.evaluator.evaluate_npz`; keyword arguments go to it (device, batch_size,
    inception_path, cache_ref, ...). Returns the FID, or the whole result dict with ``return_all``.
    """
    from evaluations.c2i.evaluator import evaluate_npz
    kwargs.setdefault("compute_pr", return_all)
    result = evaluate_npz(Path(ref_npz), Path(recon_npz), **kwargs)
    return result if return_all else result["fid"]
