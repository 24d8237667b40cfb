"""Parity checks against the original's vectors (tests/data/parity), shared by the CPU tests and the CUDA tests
(tests/test_cuda.py, run by benchmarks/device_check.sh): the same comparison on any device.

Tokenizers: features and images within 1e-4 relative (max abs diff / max abs reference). Code indices must agree
except where the argmin is a near tie (the distances to our code and to the reference's code differ by < 1e-5, so
float rounding of the BLAS, e.g. its thread count, decides): at most 1% of positions, and only there may the quantised
latent differ.
"""
from __future__ import annotations

import warnings

import torch

from autoregressive.models.gpt import GPT_models
from tokenizer import build_tokenizer

from testlib import CONFIGS, PARITY, seeded_state_dict

TOKENIZER_CASES = [("VQ_SS256", 0), ("VQ_SS256_2d", 0), ("VQ_SB256", 1), ("VQ_SB256_2d", 1),
                   ("VQ_BL256_train_new", 1), ("VQ_BL256_2d", 1)]
GPT_FILES = {"1d": "GPT-B_seed0.pt", "2d": "GPT-B_2d_seed0.pt"}
RTOL = 1e-4
MAX_FLIPPED = 0.01
NEAR_TIE = 1e-5


def load_vector(config: str, seed: int) -> dict:
    return torch.load(PARITY / f"{config}_seed{seed}.pt", weights_only=True)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|, in float64 on the CPU."""
    return ((ours.detach().cpu().double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def _positions(latent: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B*H*W, C], one row per code index."""
    return latent.permute(0, 2, 3, 1).reshape(-1, latent.shape[1])


def _near_tie_gaps(model, x, ours, theirs, flipped) -> torch.Tensor:
    """How much farther the reference's code is from our feature than our code is, at the flipped positions."""
    with torch.no_grad():
        z = torch.nn.functional.normalize(_positions(model.pre_quant_features(x)).float(), dim=-1)[flipped]
        codebook = model.quantize.codebook().float()
    d_ours = (z - codebook[ours[flipped]]).pow(2).sum(-1)
    d_theirs = (z - codebook[theirs[flipped]]).pow(2).sum(-1)
    assert (d_ours <= d_theirs + 1e-7).all()  # argmin picked the nearer one of the two
    return d_theirs - d_ours


def seeded_tokenizer(config: str, seed: int, device: str | torch.device = "cpu"):
    """The config's tokenizer with the parity vectors' seeded weights, in eval mode on ``device``."""
    # Built on the meta device, every tensor then replaced by the seeded one: no random init, one copy in memory.
    with torch.device("meta"):
        model = build_tokenizer(CONFIGS / f"{config}.yaml")
    template = model.state_dict()
    model.load_state_dict(seeded_state_dict(template, seed=seed), strict=True, assign=True)
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    return model.eval().to(device), sum(v.numel() for v in template.values())


def tokenizer_outputs(model, ref: dict, device, autocast_dtype: torch.dtype | None = None) -> dict:
    """Continuous features, quantised latent, indices and the decode of the reference codes on ``device``."""
    x = (ref["images"].float() / 127.5 - 1).to(device)
    dev = torch.device(device)
    with torch.no_grad(), warnings.catch_warnings(), torch.autocast(dev.type, dtype=autocast_dtype,
                                                                    enabled=autocast_dtype is not None):
        warnings.simplefilter("ignore")  # the 2D model warns that it ignores return_cont_feat, as the original
        cont = model.encode(x, return_code=False, return_cont_feat=True)[0]
        quant, _, info = model.encode(x)
        # decode the reference codes, so that a flipped near-tie index cannot fail the image comparison
        decoded = model.decode_code(ref["indices"].to(device), ref["quant_shape"])
    return dict(x=x, cont=cont.float(), quant=quant.float(), indices=info[2], decoded=decoded.float())


def check_tokenizer_parity(config: str, seed: int, device: str | torch.device = "cpu") -> None:
    """Assert that the tokenizer on ``device`` (float32) reproduces the original's vector of (config, seed)."""
    ref = load_vector(config, seed)
    model, num_params = seeded_tokenizer(config, seed, device)
    # num_params counts every state-dict element (parameters plus the codebook usage buffer)
    assert num_params == ref["num_params"]
    out = tokenizer_outputs(model, ref, device)
    cont, quant, indices, decoded = (out[k].cpu() for k in ("cont", "quant", "indices", "decoded"))

    assert tuple(quant.shape) == tuple(ref["quant_shape"])
    assert cont.shape == ref["cont_feat"].shape
    assert rel_err(cont, ref["cont_feat"]) < RTOL
    assert indices.shape == ref["indices"].shape
    flipped = indices != ref["indices"]
    assert flipped.float().mean().item() <= MAX_FLIPPED
    if flipped.any():
        gaps = _near_tie_gaps(model, out["x"], indices.to(device), ref["indices"].to(device), flipped.to(device))
        assert gaps.max().item() < NEAR_TIE, f"index flips that are not near ties: {gaps.tolist()}"
    # per position (rows in the order of the flat indices)
    rows, ref_rows = _positions(quant), _positions(ref["quant"])
    assert rel_err(rows[~flipped], ref_rows[~flipped]) < RTOL
    assert rel_err(decoded[:, :, ::8, ::8], ref["decoded_sub"]) < RTOL

    mean, absmax, sqmean = ref["decoded_stats"]
    assert abs(decoded.mean().item() - mean) < RTOL * absmax
    assert abs(decoded.abs().max().item() - absmax) < RTOL * absmax
    assert abs(decoded.double().pow(2).mean().item() - sqmean) < RTOL * sqmean


def seeded_gpt_b(kind: str, device: str | torch.device = "cpu"):
    """(GPT-B with the parity vector's seeded weights in eval mode, the vector) for kind '1d' or '2d'."""
    ref = torch.load(PARITY / GPT_FILES[kind], weights_only=True)
    two_d = kind == "2d"
    assert ref["model"] == "GPT-B" and ref["seed"] == 0 and bool(ref.get("gpt_2d", False)) == two_d
    model = GPT_models["GPT-B"](vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1,
                                gpt_2d=two_d).eval()
    model.load_state_dict(seeded_state_dict(model.state_dict(), seed=ref["seed"]), strict=True)
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]
    return model.to(device), ref
