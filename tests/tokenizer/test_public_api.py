"""The tokenizer's public API for other jobs: codes as [B, T], an encoder-only model, sizes without weights."""
from __future__ import annotations

import pytest
import torch

from tokenizer import build_tokenizer, tokenizer_info

from testlib import CONFIGS

TINY = CONFIGS / "VQ_tiny32.yaml"
TINY_2D = CONFIGS / "VQ_tiny32_2d.yaml"


@pytest.mark.parametrize("config", [TINY, TINY_2D])
def test_encode_to_codes_is_the_positional_contract_reshaped(config):
    model = build_tokenizer(config).eval()
    x = torch.rand(3, 3, model.image_size, model.image_size) * 2 - 1
    with torch.no_grad():
        codes = model.encode_to_codes(x)
        quant, _, info = model.encode(x)
    assert codes.dtype == torch.long and codes.shape == (3, model.num_tokens)
    assert torch.equal(codes, info[2].reshape(3, -1))
    with torch.no_grad():  # the codes decode to the quantised latent's image (rotation trick: up to rounding)
        torch.testing.assert_close(model.decode_code(codes), model.decode(quant)[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("config", [TINY, TINY_2D])
def test_encoder_only_keeps_encoding_and_drops_the_decoders(config):
    full = build_tokenizer(config).eval()
    x = torch.rand(2, 3, full.image_size, full.image_size) * 2 - 1
    with torch.no_grad():
        expected = full.encode_to_codes(x)
    enc = full.encoder_only()
    keys = set(enc.state_dict())
    assert not any(k.startswith(("decoder.", "s1to2decoder.", "s2ddecoder.")) for k in keys)
    assert sum(p.numel() for p in enc.parameters()) > 0
    with torch.no_grad():
        assert torch.equal(enc.encode_to_codes(x), expected)
    with pytest.raises(AttributeError):
        enc.decode_code(expected)


def test_tokenizer_info_needs_no_weights():
    info = tokenizer_info(TINY)
    model = build_tokenizer(TINY)
    assert info == {"codebook_size": model.codebook_size, "num_tokens": model.num_tokens,
                    "image_size": model.image_size, "model_cls": "VQVitModelPlus",
                    "token_grid": (1, model.num_tokens)}
    assert tokenizer_info(CONFIGS / "VQ_XLXXL256.yaml")["num_tokens"] == 256  # 2.9B parameters, built on meta
