"""The tokenizers reproduce the original GigaTok code's outputs on seeded weights (tests/data/parity).

Each vector was computed by the original implementation (tests/data/parity/README.md) on weights from
``seeded_state_dict(..., seed)`` and scikit-image photos; our model gets the same weights and input and must match
(tolerances and the near-tie rule in tests/parity_checks.py, shared with the CUDA tests).
"""
from __future__ import annotations

import pytest
import torch

from tokenizer import build_tokenizer

from parity_checks import TOKENIZER_CASES as CASES
from parity_checks import check_tokenizer_parity, load_vector
from sample_photos import photo_256
from testlib import CONFIGS


@pytest.mark.parametrize("config,seed", CASES)
def test_reference_input_is_the_named_photos(config, seed):
    ref = load_vector(config, seed)
    assert ref["config"] == config and ref["seed"] == seed and ref["kind"] == "tokenizer"
    assert ref["images"].dtype == torch.uint8
    assert torch.equal(ref["images"], torch.stack([photo_256(p) for p in ref["photos"]]))


@pytest.mark.slow
@pytest.mark.parametrize("config,seed", CASES)
def test_matches_original(config, seed):
    check_tokenizer_parity(config, seed)


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
