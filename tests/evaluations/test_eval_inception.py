"""The TF FID Inception graph port against the public TorchScript port's own tensors and code."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluations.inception import (
    SPATIAL_DIM,
    InceptionWeightsError,
    TFInceptionV3,
    convert_torchscript,
    load_inception,
    resolve_weights,
    tf1_resize_bilinear,
)


def _naive_tf1_resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Per-pixel transcription of TF 1.x ResizeBilinear (legacy coordinates), float32 like the kernel."""
    c, h, w = img.shape
    out = np.zeros((c, out_h, out_w), np.float32)
    sy, sx = np.float32(h / out_h), np.float32(w / out_w)
    for i in range(out_h):
        fy = np.float32(i) * sy
        y0, y1 = int(np.floor(fy)), min(int(np.ceil(fy)), h - 1)
        ly = np.float32(fy - y0)
        for j in range(out_w):
            fx = np.float32(j) * sx
            x0, x1 = int(np.floor(fx)), min(int(np.ceil(fx)), w - 1)
            lx = np.float32(fx - x0)
            top = img[:, y0, x0] + (img[:, y0, x1] - img[:, y0, x0]) * lx
            bottom = img[:, y1, x0] + (img[:, y1, x1] - img[:, y1, x0]) * lx
            out[:, i, j] = top + (bottom - top) * ly
    return out


def _stylegan_resize(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """How the StyleGAN metrics TorchScript emulates the TF resize: affine grid shifted by 1/in - 1/out, border."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3).unsqueeze(0).repeat(n, 1, 1)
    theta[:, 0, 2] += 1 / w - 1 / size
    theta[:, 1, 2] += 1 / h - 1 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, "bilinear", "border", align_corners=False)


def _ts_trunk_outputs(ts, x299: torch.Tensor):
    """pool_3 and mixed_6/conv from the TorchScript module's own submodules."""
    layers = ts.net.layers if hasattr(ts, "net") else ts.layers
    h = x299
    for name in ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1", "mixed_2",
                 "mixed_3", "mixed_4", "mixed_5"):
        h = getattr(layers, name)(h)
    spatial = layers.mixed_6.conv(h)
    return ts(x299).reshape(len(x299), -1), spatial


def test_tf1_resize_matches_kernel_transcription():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, 3, 37, 53), generator=g).float()
    for size in ((29, 71), (37, 53), (80, 20)):
        ours = tf1_resize_bilinear(x, size)[0].numpy()
        np.testing.assert_array_equal(ours, _naive_tf1_resize(x[0].numpy(), *size))


def test_tf1_resize_close_to_stylegan_grid_sample():
    x = torch.randint(0, 256, (2, 3, 256, 256), generator=torch.Generator().manual_seed(1)).float()
    diff = (tf1_resize_bilinear(x, 299) - _stylegan_resize(x)).abs().max()
    assert diff < 0.02  # same sampling positions up to float32 round-off of the grid


@torch.no_grad()
def test_features_equal_torchscript_on_real_photos(ts_module, inception, photos):
    ts = ts_module
    x = torch.from_numpy(photos[:3]).permute(0, 3, 1, 2).float()
    x299 = inception.preprocess(x)
    assert x299.shape == (3, 3, 299, 299)
    ref_pool, ref_mixed6 = _ts_trunk_outputs(ts, x299)
    ours = inception(x)
    assert ours.pool.shape == (3, 2048) and ours.spatial.shape == (3, SPATIAL_DIM)
    torch.testing.assert_close(ours.pool, ref_pool, atol=1e-4, rtol=0)
    ref_spatial = ref_mixed6[:, :7].permute(0, 2, 3, 1).reshape(3, -1)  # TF NHWC order, as ADM's [..., :7]
    torch.testing.assert_close(ours.spatial, ref_spatial, atol=1e-4, rtol=0)
    assert ref_pool.abs().max() > 0.5 and ref_spatial.abs().max() > 0.5  # real activations, not zeros


@torch.no_grad()
def test_full_pipeline_close_to_torchscript_with_its_resize(ts_module, inception, photos):
    """A raw 128-px image through our graph vs the port's own preprocessing (grid-sample resize, (x-128)/128)."""
    x = torch.from_numpy(photos[3:4]).permute(0, 3, 1, 2).float()
    ref = ts_module((_stylegan_resize(x) - 128) / 128).reshape(1, -1)
    ours = inception(x).pool
    torch.testing.assert_close(ours, ref, atol=2e-3, rtol=1e-3)


def test_nhwc_uint8_input_and_logits(inception, weights_with_logits, photos):
    x = torch.from_numpy(photos[:1])  # uint8 NHWC, as stored in the npz files
    with pytest.raises(InceptionWeightsError, match="softmax"):
        inception(x, want_logits=True, channels_last_input=True)
    full = load_inception(weights_with_logits, device="cpu")
    assert full.has_logits
    with torch.no_grad():
        out = full(x, want_logits=True, channels_last_input=True)
        ref = inception(x.permute(0, 3, 1, 2).float())
    torch.testing.assert_close(out.pool, ref.pool)
    torch.testing.assert_close(out.logits, out.pool @ full.output.weight.t())
    probs = full.probabilities(out.pool)
    torch.testing.assert_close(probs.sum(1), torch.ones(1))


def test_converter_rejects_other_files(tmp_path):
    from evaluations.inception import state_dict_from_torchscript_tensors
    with pytest.raises(InceptionWeightsError, match="layers.conv.weight"):
        state_dict_from_torchscript_tensors({"conv.weight": torch.zeros(1)})
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InceptionWeightsError, match="could not read"):
        convert_torchscript(bad)


def test_load_from_torchscript_path_caches_safetensors(ts_file, tmp_path, monkeypatch, converted):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    model = load_inception(ts_file, device="cpu")
    cached = list((tmp_path / "torch" / "hub" / "checkpoints").glob("inception-2015-12-05-*.safetensors"))
    assert len(cached) == 1 and not model.has_logits
    again = load_inception(cached[0], device="cpu")
    for key, value in converted[0].items():
        assert torch.equal(again.state_dict()[key], value), key
    import hashlib
    assert model.weights_sha256 == hashlib.sha256(ts_file.read_bytes()).hexdigest()
    assert again.weights_sha256 == model.weights_sha256  # same identity from the cached conversion


def test_resolve_weights_env_and_offline_messages(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("GIGATOK_INCEPTION_PATH", raising=False)
    with pytest.raises(InceptionWeightsError, match="--inception-path"):
        resolve_weights(None, download=False)
    monkeypatch.setenv("GIGATOK_INCEPTION_PATH", str(tmp_path / "missing.pt"))
    with pytest.raises(InceptionWeightsError, match="does not exist"):
        resolve_weights(None)
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"")
    monkeypatch.setenv("GIGATOK_INCEPTION_PATH", str(f))
    assert resolve_weights(None) == f


def test_module_tree_matches_torchscript_names(converted):
    state, _ = converted
    own = TFInceptionV3().state_dict()
    trunk = {k for k in own if not k.startswith("output.")}
    assert trunk == set(state)
    assert all(tuple(own[k].shape) == tuple(state[k].shape) for k in trunk)
