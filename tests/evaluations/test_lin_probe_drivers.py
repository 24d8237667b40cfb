"""The tokenizer and GPT linear-probe drivers: train on a tiny labelled folder, checkpoint, evaluate, rerun.

The probe recipe itself (reaching high accuracy on separable features) is tested in test_eval_lin_probe.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from autoregressive import GPT_models
from autoregressive.lin_probe import main as gpt_probe
from tokenizer import build_tokenizer
from tokenizer.lin_probe import main as tok_probe
from utils.checkpoint import save_atomic

from testlib import CONFIGS

TINY = CONFIGS / "VQ_tiny32.yaml"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    rng = np.random.RandomState(0)
    for split, n in (("ILSVRC2012_img_train", 8), ("ILSVRC2012_img_val", 4)):
        for c in range(2):  # class 0 dark, class 1 bright: separable by any reasonable feature
            folder = root / "data" / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.randint(0, 100, (36, 36, 3)) + 150 * c
                Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.png")
    torch.manual_seed(0)
    save_atomic({"model": build_tokenizer(TINY).state_dict()}, root / "tok.pt")
    save_atomic({"model": GPT_models["GPT-tiny"](vocab_size=1024, block_size=64, num_classes=10).state_dict()},
                root / "gpt.pt")
    return root


def _common(root, name):
    return ["--data-path", str(root / "data"), "--save-path", str(root / "out"), "--sub-exp-dir", name,
            "--batch-size", "4", "--epochs", "6", "--warmup-epochs", "1", "--blr", "25.6", "--ckpt-epoch", "2",
            "--num-classes", "2", "--num-workers", "0", "--device", "cpu"]


def test_tokenizer_probe_trains_checkpoints_and_reevaluates(setup):
    args = _common(setup, "tok") + ["--model-config", str(TINY), "--vq-ckpt", str(setup / "tok.pt")]
    result = tok_probe(args)
    assert (result["global_batch_size"], result["accum_steps"]) == (4, 1)  # the original's: batch x processes
    exp = setup / "out" / "tok"
    # as the original: epoch % 2 == 0 and epoch > 0, and the last epoch
    assert sorted(p.name for p in (exp / "checkpoints").glob("*.pt")) == ["0002.pt", "0004.pt", "0005.pt"]
    # default feature: ViT-encoder width (tiny: 256); accuracy on random weights is only checked for range here
    assert result["total"] == 8 and result["feature_dim"] == 256 and 0.0 <= result["top1"] <= 1.0
    again = tok_probe(args + ["--eval"])
    assert again["top1"] == result["top1"]
    assert "Tokenizer: Accuracy of the network on the 8 test images" in (exp / "lin_probe_acc.txt").read_text()
    assert json.loads((exp / "metrics.json").read_text())["top1"] == result["top1"]


def test_gpt_probe_uses_middle_layer_features(setup):
    args = _common(setup, "gpt") + ["--tok-config", str(TINY), "--vq-ckpt", str(setup / "tok.pt"),
                                    "--gpt-model", "GPT-tiny", "--gpt-ckpt", str(setup / "gpt.pt"),
                                    "--gpt-num-classes", "10", "--global-batch-size", "8"]
    result = gpt_probe(args)
    assert result["feature_layer"] == len(GPT_models["GPT-tiny"](vocab_size=8, block_size=4).layers) // 2
    # 8 images per step as 2 accumulated batches of 4, lr = blr x 8 / 256
    assert (result["global_batch_size"], result["accum_steps"]) == (8, 2) and result["lr"] == pytest.approx(0.8)
    assert torch.load(setup / "out" / "gpt" / "checkpoints" / "0005.pt", weights_only=True)["steps"] == 12
    assert result["total"] == 8 and 0.0 <= result["top1"] <= 1.0
    assert (setup / "out" / "gpt" / "checkpoints" / "0005.pt").is_file()
