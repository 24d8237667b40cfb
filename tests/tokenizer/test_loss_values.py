"""Documented loss values: VQ_SS256's loss settings on a fixed batch with seeded weights (Detailed_instructions.md).

Model, LPIPS VGG trunk, semantic teacher (DINOv2-B shape) and PatchGAN get the parity vectors' seeded weights (the
LPIPS linear heads and input scaling stay the ones the lpips package ships); the batch is the parity photos
(astronaut, coffee). LPIPS runs without its train-mode dropout so the values are
deterministic. Each logged term is also recomputed here from its definition. Regenerate the table with
``GIGATOK_WRITE_LOSS_VALUES=1 pytest tests/tokenizer/test_loss_values.py``.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from tokenizer import build_tokenizer, read_tokenizer_config
from tokenizer.losses import build_loss

from testlib import CONFIGS, DATA, PARITY, seeded_state_dict

VALUES = DATA / "loss_values_VQ_SS256.json"
STEPS = {"t=1 (aux on, no GAN)": 0, "t=20000 (aux off, GAN on)": 19999}


@pytest.mark.slow
def test_documented_loss_values_vq_ss256():
    cfg = read_tokenizer_config(CONFIGS / "VQ_SS256.yaml", ["+loss.params.lpips_train_dropout=false"])
    ref = torch.load(PARITY / "VQ_SS256_seed0.pt", weights_only=True)
    x = ref["images"].float() / 127.5 - 1
    model = build_tokenizer(cfg).train()
    model.load_state_dict(seeded_state_dict(model.state_dict(), seed=0))
    loss = build_loss(cfg, pretrained=False).train()
    shipped = {k: v for k, v in loss.state_dict().items()
               if k.startswith(("perceptual.net.scaling_layer", "perceptual.net.lin"))}
    loss.load_state_dict({**seeded_state_dict(loss.state_dict(), seed=0), **shipped})
    results = {}
    for name, step in STEPS.items():
        torch.manual_seed(0)
        model.quantize.codebook_used.zero_()
        out = model(x, rec_loss=loss.aux_active(step), ret_inner_feat=True)
        total, logs = loss.generator_loss(out, x, step)
        (dec, dir_dec), (diff, fea) = out[0], out[1]
        # terms recomputed from their definitions
        assert logs["rec_loss"] == pytest.approx(F.mse_loss(dec, x).item(), rel=1e-5)
        assert logs["vq_loss"] == pytest.approx(diff[0].item(), rel=1e-6)
        assert logs["commit_loss"] == pytest.approx(diff[1].item(), rel=1e-6)
        if loss.aux_active(step):
            assert logs["direct_rec_loss"] == pytest.approx(F.mse_loss(dir_dec, x).item(), rel=1e-5)
            assert logs["feature_rec_loss"] == pytest.approx(float(fea.detach()), rel=1e-6)
        with torch.no_grad():
            teacher = loss.teacher(x)
        proj = -F.cosine_similarity(out[2].float(), teacher.float(), dim=-1).mean().item()
        assert logs["proj_loss"] == pytest.approx(proj, rel=1e-4, abs=1e-6)
        results[name] = {"total": total.item(), **{k: float(v) for k, v in logs.items()}}
    if os.environ.get("GIGATOK_WRITE_LOSS_VALUES"):
        VALUES.write_text(json.dumps(results, indent=2, sort_keys=True))
    expected = json.loads(VALUES.read_text())
    for name, values in expected.items():
        for key, value in values.items():
            assert results[name][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, key)
