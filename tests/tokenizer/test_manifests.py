"""Every released config builds a model whose state-dict keys, shapes and parameter count equal the original's."""
from __future__ import annotations

import json

import pytest
import torch

from tokenizer import build_tokenizer

from testlib import CONFIGS, MANIFESTS

RELEASED = ["VQ_SS256", "VQ_SB256", "VQ_BL256", "VQ_BL256_dino_disc", "VQ_BL256_train_new", "VQ_XLXXL256",
            "VQ_SS256_2d", "VQ_SB256_2d", "VQ_BL256_2d"]
# parameters() counts from the original (the 65536-entry usage buffer is not a parameter)
PARAMS = {"VQ_SS256": 136_073_227, "VQ_SB256": 232_399_627, "VQ_BL256": 621_637_131,
          "VQ_BL256_dino_disc": 621_637_131, "VQ_BL256_train_new": 621_637_131, "VQ_XLXXL256": 2_893_970_443,
          "VQ_SS256_2d": 135_548_427, "VQ_SB256_2d": 197_132_555, "VQ_BL256_2d": 491_410_187}


@pytest.mark.parametrize("name", RELEASED)
def test_state_dict_matches_manifest(name):
    manifest = json.loads((MANIFESTS / f"tok_{name}.json").read_text())
    with torch.device("meta"):
        model = build_tokenizer(CONFIGS / f"{name}.yaml")
    assert type(model).__name__ == manifest["model_cls"]
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = {k: list(v["shape"]) if isinstance(v, dict) else list(v) for k, v in manifest["state_dict"].items()}
    assert sorted(shapes) == sorted(expected)
    assert shapes == expected
    # same ORDER as well: an original checkpoint's index-keyed optimiser state is matched by parameter position
    assert list(shapes) == list(expected)
    assert len(shapes) == manifest["num_keys"]
    assert manifest["num_parameters"] == PARAMS[name]
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert sum(t.numel() for t in model.state_dict().values()) == manifest["num_params"]
    distill = sum(p.numel() for n, p in model.named_parameters() if ".distill_mlp." in n)
    assert manifest["num_params"] - distill == manifest["num_params_without_distill_head"]
