"""Validation loss (autoregressive.val_loss): token-weighted and batch-mean cross-entropy equal a direct
computation, images and stored codes give the same number, results are appended to JSON and val_results.txt, and
two processes count every image once."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autoregressive.extract_codes import code_dirs
from autoregressive.val_loss import main as val_main
from utils.checkpoint import save_atomic
from utils.config import ConfigError

from test_train_c2i import N_CLASSES, TINY_TOK, make_ar_data
from testlib import threads, tiny_gpt, torchrun

GPT_CFG = {"gpt_model": "GPT-tiny", "vocab_size": 1024, "block_size": 64, "num_classes": N_CLASSES}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    with threads(1):
        yield _make_data(tmp_path_factory)


def _make_data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("val_data")
    out = make_ar_data(root, train_per_class=1, val_per_class=3)  # 12 held-out images
    model = tiny_gpt(seed=1, vocab_size=1024, block_size=64, num_classes=N_CLASSES)
    ema = tiny_gpt(seed=2, vocab_size=1024, block_size=64, num_classes=N_CLASSES)
    out["model"], out["ema"] = model, ema
    out["ckpt"] = save_atomic({"model": model.state_dict(), "ema": ema.state_dict(), "steps": 5,
                               "args": {"gpt_model": "GPT-tiny"}, "gpt_config": GPT_CFG},
                              root / "run" / "checkpoints" / "0000005.pt")
    return out


def reference(model, codes_root, batch: int) -> tuple[float, float]:
    codes_dir, labels_dir = code_dirs(codes_root, "imagenet", 32)
    n = len(list(codes_dir.glob("*.npy")))
    z = torch.stack([torch.from_numpy(np.load(codes_dir / f"{i}.npy")[0]) for i in range(n)])
    c = torch.tensor([int(np.load(labels_dir / f"{i}.npy")) for i in range(n)])
    with torch.no_grad():
        logits, _ = model.eval()(z[:, :-1], c)
    ce = F.cross_entropy(logits.transpose(1, 2), z, reduction="none").double()
    means = [ce[i: i + batch].mean().item() for i in range(0, n, batch)]
    return ce.mean().item(), sum(means) / len(means)


def args(data, *extra):
    return ["--gpt-ckpt", str(data["ckpt"]), "--tok-config", str(TINY_TOK), "--device", "cpu", "--num-workers", "0",
            "--precision", "none", "--per-proc-batch-size", "5", *extra]


def test_code_folder_matches_direct_computation_and_records(data):
    res = val_main(args(data, "--code-path", str(data["val_codes"])))
    token_mean, batch_mean = reference(data["model"], data["val_codes"], 5)  # batches of 5, 5, 2
    assert res["num_images"] == 12 and res["num_tokens"] == 12 * 64 and res["gpt_model"] == "GPT-tiny"
    assert res["val_loss"] == pytest.approx(token_mean, rel=1e-6)
    assert res["val_loss_batch_mean"] == pytest.approx(batch_mean, rel=1e-6)
    assert res["val_loss"] != pytest.approx(res["val_loss_batch_mean"], rel=1e-9)  # the uneven last batch
    assert res["perplexity"] == pytest.approx(math.exp(token_mean), rel=1e-6)
    assert len(res["per_position_loss"]) == 64 and np.mean(res["per_position_loss"]) == pytest.approx(token_mean)
    run = data["ckpt"].parent.parent
    txt = (run / "val_results.txt").read_text().splitlines()
    assert txt[-2:] == ["gpt_iter: 0000005 ", f"val_loss: {res['val_loss']:.6f} "]

    # images (tokenised with the ADM centre crop) give the same codes and so the same loss; EMA weights on request
    img = val_main(args(data, "--data-path", str(data["val_images"]), "--vq-ckpt", str(data["tok_ckpt"])))
    assert img["val_loss"] == pytest.approx(res["val_loss"], rel=1e-6) and img["num_images"] == 12
    ema = val_main(args(data, "--code-path", str(data["val_codes"]), "--ema", "--out-json",
                        str(run / "ema.json"), "--no-txt"))
    assert ema["val_loss"] == pytest.approx(reference(data["ema"], data["val_codes"], 5)[0], rel=1e-6)
    records = json.loads((run / "val_results.json").read_text())
    assert len(records) == 2 and [r["dataset"] for r in records] == ["imagenet_code", "imagenet"]
    assert len(json.loads((run / "ema.json").read_text())) == 1
    assert len((run / "val_results.txt").read_text().splitlines()) == 4


def test_mismatched_tokenizer_is_a_clear_error(data, tmp_path):
    bad = save_atomic({"model": data["model"].state_dict(), "gpt_config": {**GPT_CFG, "vocab_size": 16384}},
                      tmp_path / "checkpoints" / "0000001.pt")
    with pytest.raises(ConfigError, match="vocab_size=16384"):
        val_main(["--gpt-ckpt", str(bad), "--tok-config", str(TINY_TOK), "--code-path", str(data["val_codes"]),
                  "--device", "cpu", "--num-workers", "0"])


def test_a_described_checkpoint_needs_no_model_flags(data, tmp_path):
    """A version-1 GPT checkpoint stores its tokenizer's config: the loss needs only --gpt-ckpt and the codes; a flag
    that contradicts the checkpoint is one error naming both values."""
    from tokenizer import read_tokenizer_config
    from utils.config import to_plain

    ckpt = save_atomic({"model": data["model"].state_dict(), "steps": 5, "format_version": 1,
                        "args": {"gpt_model": "GPT-tiny"}, "gpt_config": GPT_CFG,
                        "tokenizer_config": to_plain(read_tokenizer_config(TINY_TOK))},
                       tmp_path / "run" / "checkpoints" / "0000005.pt")
    common = ["--gpt-ckpt", str(ckpt), "--code-path", str(data["val_codes"]), "--device", "cpu", "--num-workers",
              "0", "--precision", "none", "--per-proc-batch-size", "5", "--no-txt"]
    res = val_main(common)
    assert res["val_loss"] == pytest.approx(reference(data["model"], data["val_codes"], 5)[0], rel=1e-6)
    assert res["gpt_model"] == "GPT-tiny" and res["tok_config"]["model"]["model_cls"] == "VQVitModelPlus"
    with pytest.raises(ConfigError, match=r"--gpt-model 'GPT-B' \(the checkpoint has gpt_model='GPT-tiny'\)"):
        val_main([*common, "--gpt-model", "GPT-B"])


@pytest.mark.slow
def test_two_processes_count_each_image_once(data, tmp_path):
    out = tmp_path / "ddp.json"
    torchrun("autoregressive.val_loss", args(data, "--code-path", str(data["val_codes"]), "--out-json", str(out),
                                             "--no-txt"))
    res = json.loads(out.read_text())[-1]
    assert res["world_size"] == 2 and res["num_images"] == 12
    assert res["val_loss"] == pytest.approx(reference(data["model"], data["val_codes"], 5)[0], rel=1e-6)
