"""The tokenizers reproduce the original's outputs on seeded weights (../shared/parity)."""
from __future__ import annotations

import pytest
import torch

from testlib import CONFIGS, seeded_state_dict, shared_path
from tokenizer import build_tokenizer


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("name", ["VQ_SS256", "VQ_SS256_2d"])
def test_matches_original_vectors(name):
    ref = torch.load(shared_path("parity", f"{name}_seed0.pt"), weights_only=True)
    model = build_tokenizer(CONFIGS / f"{name}.yaml").eval()
    model.load_state_dict(seeded_state_dict(model.state_dict(), seed=0), strict=True)
    x = ref["images"].float() / 127.5 - 1.0
    assert torch.equal(x, ref["x"])
    with torch.no_grad(), pytest.warns(UserWarning) if name.endswith("_2d") else _nullcontext():
        cont = model.encode(x, return_code=False, return_cont_feat=True)[0]
    with torch.no_grad():
        quant, _, info = model.encode(x)
        decoded = model.decode_code(info[2], quant.shape)
    assert tuple(quant.shape) == tuple(ref["quant_shape"])
    assert rel_err(cont, ref["cont_feat"]) < 1e-4
    assert rel_err(quant, ref["quant"]) < 1e-4
    assert (info[2] == ref["indices"]).float().mean().item() >= 0.999
    assert rel_err(decoded, ref["decoded"]) < 1e-4
    # num_params in the vectors counts every state-dict element (parameters + the usage buffer)
    assert sum(t.numel() for t in model.state_dict().values()) == ref["num_params"]


def test_pre_quant_features_2d_are_continuous():
    """The 2D model's encode ignores return_cont_feat (as the original); pre_quant_features gives the real thing."""
    model = build_tokenizer(CONFIGS / "VQ_SS256_2d.yaml", ["model.init_args.encoder_size=tiny",
                                                            "model.init_args.decoder_size=tiny"]).eval()
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        feat = model.pre_quant_features(x)
        quant = model.encode(x)[0]
    assert feat.shape == quant.shape == (1, 8, 16, 16)
    unit = torch.nn.functional.normalize(feat, dim=1)
    assert not torch.allclose(feat, quant)
    # the quantised latent is the nearest unit code vector of the normalised features
    assert (unit * quant).sum(1).min() > 0


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
