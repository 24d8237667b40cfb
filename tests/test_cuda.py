"""The CUDA paths, proved in a few minutes on one GPU (``pytest -m cuda``, run by benchmarks/device_check.sh).

Without CUDA every test here skips with the reason. On a GPU:

* parity vectors of the original on CUDA in float32 with TF32 off, with the CPU tolerances (tests/parity_checks.py);
  the bf16 autocast error is printed (device_check.json records it too);
* GPT-B: teacher-forced logits and greedy CFG sequences on CUDA, eager and CUDA-graph decoding alike
  (tests/autoregressive/test_static_decode.py has the tiny-model equality tests);
* tokenizer training in bf16 under torchrun on one process with NCCL: DDP and FSDP2 (GIGATOK_FORCE_DIST=1 makes a
  process group for one rank), then an exact resume on CUDA;
* Inception and LPIPS give the CPU's numbers on CUDA.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from autoregressive import generate
from autoregressive.models.static_decode import StaticDecoder

from parity_checks import (
    check_tokenizer_parity,
    load_vector,
    rel_err,
    seeded_gpt_b,
    seeded_tokenizer,
    tokenizer_outputs,
)
from testlib import CONFIGS, REPO, child_env, make_images, torchrun_cmd

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/device_check.sh)")]


@pytest.fixture
def no_tf32():
    """Strict float32 matmuls and convolutions for the test (the CPU tolerances apply)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("config,seed", [("VQ_SS256", 0), ("VQ_SS256_2d", 0), ("VQ_BL256_train_new", 1)])
def test_tokenizer_parity_fp32(config, seed, no_tf32):
    check_tokenizer_parity(config, seed, device="cuda")


def test_tokenizer_bf16_error_is_small():
    ref = load_vector("VQ_SS256", 0)
    model, _ = seeded_tokenizer("VQ_SS256", 0, "cuda")
    out = tokenizer_outputs(model, ref, "cuda", autocast_dtype=torch.bfloat16)
    errors = {"cont_feat": rel_err(out["cont"], ref["cont_feat"]),
              "decoded_sub": rel_err(out["decoded"][:, :, ::8, ::8], ref["decoded_sub"]),
              "indices_equal": (out["indices"].cpu() == ref["indices"]).float().mean().item()}
    print("VQ_SS256 bf16 autocast vs the original's fp32:", json.dumps(errors))
    assert errors["cont_feat"] < 0.05 and errors["decoded_sub"] < 0.05


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_gpt_b_parity_and_cuda_graph_decoding(kind, no_tf32):
    model, ref = seeded_gpt_b(kind, "cuda")
    with torch.no_grad():
        logits, _ = model(ref["tokens"][:, :-1].cuda(), ref["labels"].cuda())
    assert rel_err(logits[:, ::16], ref["logits_every16"]) < 1e-4
    assert torch.equal(logits.argmax(-1).cpu(), ref["logits_argmax"])
    case = ref["greedy_step"]
    kwargs = dict(cfg_scale=case["cfg_scale"], cfg_schedule=case["cfg_schedule"],
                  cfg_schedule_kwargs=case["cfg_schedule_kwargs"], top_k=1, sample_logits=False)
    labels = ref["labels"].cuda()
    eager = generate(model, labels, 256, **kwargs)
    assert torch.equal(eager.cpu(), case["tokens"].long())
    with StaticDecoder(model, batch_size=len(labels), compile="cudagraph") as decoder:
        assert torch.equal(decoder.generate(labels, 256, **kwargs), eager)
        assert torch.equal(decoder.generate(labels, 256, **kwargs), eager)  # replay of the same graph


def _train(images, save, name, iterations, *extra):
    args = ["--data-path", images, "--model-config", CONFIGS / "VQ_tiny32.yaml", "--save-path", save,
            "--exp-name", name, "--iterations", iterations, "--global-batch-size", "8", "--num-workers", "0",
            "--mixed-precision", "bf16", "--device", "cuda", "--log-every", "1", "--random-loss-nets",
            "--no-progress", "--ckpt-every", "2", *extra,
            "--config-overrides", "loss.params.disc_start=2", "model.init_args.encoder_size=micro",
            "model.init_args.decoder_size=micro"]
    env = child_env(GIGATOK_FORCE_DIST="1", CUDA_VISIBLE_DEVICES="0")
    proc = subprocess.run(torchrun_cmd("tokenizer.train", args, nproc=1), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    from utils.logging import read_metrics
    return read_metrics(save / name / "metrics.jsonl"), proc.stdout + proc.stderr


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_bf16_training_nccl_one_process_and_exact_resume(parallel, tmp_path):
    images = make_images(tmp_path / "images")
    ref, log = _train(images, tmp_path, "ref", 4, "--data-parallel", parallel)
    assert f"{parallel} on 1 x cuda" in log, log[-2000:]
    assert sorted(ref) == [1, 2, 3, 4] and all(torch.isfinite(torch.tensor(ref[s]["loss"])) for s in ref)
    # resume from the step-2 checkpoint in a fresh experiment: steps 3 and 4 repeat exactly
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "ref" / "checkpoints" / "0000002.pt", tmp_path / "resumed" / "checkpoints")
    res, _ = _train(images, tmp_path, "resumed", 4, "--data-parallel", parallel)
    assert sorted(res) == [3, 4]
    for step in (3, 4):
        assert res[step]["loss"] == ref[step]["loss"], (step, res[step]["loss"], ref[step]["loss"])


def test_inception_and_lpips_on_cuda_equal_cpu(no_tf32):
    from evaluations.inception import TFInceptionV3, random_weights_
    from evaluations.recon import LPIPSMetric

    net = random_weights_(TFInceptionV3()).eval()
    images = torch.rand(4, 3, 64, 64) * 255
    with torch.no_grad():
        cpu = net(images)
        gpu = net.cuda()(images.cuda())
    assert cpu.pool.abs().max() > 0 and cpu.spatial.abs().max() > 0
    assert rel_err(gpu.pool, cpu.pool) < 1e-4 and rel_err(gpu.spatial, cpu.spatial) < 1e-4

    torch.manual_seed(1)
    lp_cpu = LPIPSMetric("cpu", pretrained_backbone=False)
    lp_gpu = LPIPSMetric("cuda", pretrained_backbone=False)
    lp_gpu.model.load_state_dict(lp_cpu.model.state_dict())
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    assert rel_err(lp_gpu(x.cuda(), y.cuda()), lp_cpu(x, y)) < 1e-4
