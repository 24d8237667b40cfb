"""End to end on real photos: Inception activations -> ADM metrics, the CLI and its files."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluations.c2i.evaluator import Evaluator, evaluate_npz, main, parse_metric_lines
from evaluations.inception import load_inception
from evaluations.metrics import MetricInputError, compute_statistics

from _eval_images import add_noise

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fid_self_zero_and_growing_with_perturbation(evaluator, photos, base_acts):
    n = 12
    stats = lambda a: compute_statistics(a, keep_activations=True)  # noqa: E731
    ref_pool, ref_spatial = stats(base_acts[0][:n]), stats(base_acts[1][:n])
    # 12 images: singular covariances, where the exact activation-space ("gram") route is instant
    assert abs(ref_pool.frechet_distance(ref_pool, method="gram")) < 1e-3
    assert abs(ref_spatial.frechet_distance(ref_spatial, method="gram")) < 1e-3
    fids = []
    for std in (10.0, 40.0):
        pool, spatial = evaluator.compute_activations([add_noise(photos[:n], std)])
        fids.append(stats(pool).frechet_distance(ref_pool, method="gram"))
    assert 1.0 < fids[0] < fids[1], fids
    assert stats(spatial).frechet_distance(ref_spatial, method="gram") > 1.0


def test_inception_score_of_identical_images_is_one(weights_with_logits, base_acts):
    ev = Evaluator(inception=load_inception(weights_with_logits, device="cpu"), device="cpu", progress=False)
    same = np.repeat(base_acts[0][:1], 12, axis=0)
    assert ev.compute_inception_score(same) == pytest.approx(1.0, abs=1e-5)
    assert ev.compute_inception_score(base_acts[0]) > 1.0


def test_precision_recall_of_a_set_with_itself(evaluator, base_acts):
    assert evaluator.compute_prec_recall(base_acts[0], base_acts[0]) == (1.0, 1.0)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_cli_writes_lines_txt_and_metrics_json(tmp_path, photos, weights_with_logits, capsys):
    ref, sample = tmp_path / "ref.npz", tmp_path / "samples.npz"
    np.savez(ref, arr_0=photos[:6])
    np.savez(sample, arr_0=add_noise(photos[6:12], 20.0))
    out = tmp_path / "m" / "metrics.json"
    rc = main([str(ref), str(sample), "--device", "cpu", "--inception-path", str(weights_with_logits),
               "--out", str(out), "--fid-method", "gram", "--batch-size", "4", "--cache-ref"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["Inception Score", "FID", "sFID", "Precision", "Recall"]
    txt = (tmp_path / "samples.txt").read_text()
    assert txt.strip().splitlines() == lines
    metrics = json.loads(out.read_text())
    assert parse_metric_lines(txt) == pytest.approx({k: metrics[k] for k in
                                                     ("inception_score", "fid", "sfid", "precision", "recall")})
    assert metrics["reference_sha256"] == _sha(ref)
    assert metrics["inception_weights_sha256"] == _sha(weights_with_logits)
    assert metrics["num_reference_images"] == 6 and metrics["num_sample_images"] == 6
    assert metrics["fid"] > 0 and metrics["sfid"] > 0 and metrics["inception_score"] > 1
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert metrics["reference_stats"] == "computed from arr_0"
    cached = list(tmp_path.glob("ref.npz.inception-*.npz"))
    assert len(cached) == 1

    # the same evaluation again: reference activations come from the cache, results are identical
    again = evaluate_npz(ref, sample, device="cpu", inception_path=weights_with_logits, batch_size=4,
                         cache_ref=True, fid_method="gram", verbose=False)
    for key in ("inception_score", "fid", "sfid", "precision", "recall"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-6, abs=1e-9), key


def test_adm_reference_with_precomputed_statistics_and_rfid(tmp_path, photos, evaluator, base_acts):
    """A ref npz with mu/sigma/mu_s/sigma_s (VIRTUAL_imagenet256_labeled.npz layout): stats are used as stored.

    The stored statistics are those of the *sample* images, so FID/sFID must be ~0, although the ref's own arr_0
    (which still feeds precision/recall, as in ADM) holds different photos.
    """
    from evaluations.recon import rfid
    pool, spatial = compute_statistics(base_acts[0][4:10]), compute_statistics(base_acts[1][4:10])
    ref = tmp_path / "VIRTUAL_ref.npz"
    np.savez(ref, arr_0=photos[:4], mu=pool.mu, sigma=pool.sigma, mu_s=spatial.mu, sigma_s=spatial.sigma)
    sample = tmp_path / "s.npz"
    np.savez(sample, arr_0=photos[4:10])
    result = rfid(ref, sample, return_all=True, evaluator=evaluator, fid_method="eigh", verbose=False)
    # ~0 up to float rounding: on CPU the channels-last convolutions may round differently for another batch size,
    # and 6-image covariances are singular, which amplifies that to ~1e-3; different photos give FID in the tens
    assert abs(result["fid"]) < 2e-2 and abs(result["sfid"]) < 2e-2
    assert result["reference_stats"] == "precomputed"
    assert result["inception_score"] is None  # the trunk-only weights have no softmax layer
    assert result["num_reference_images"] == 4 and result["num_sample_images"] == 6
    assert result["precision"] is not None
    with pytest.raises(MetricInputError, match="gram"):  # no activations behind precomputed statistics
        evaluate_npz(ref, sample, evaluator=evaluator, fid_method="gram", compute_pr=False, verbose=False)


def test_small_sample_counts_rejected_before_inference(tmp_path, photos, capsys):
    ref = tmp_path / "ref.npz"
    np.savez(ref, arr_0=photos[:5])
    one = tmp_path / "one.npz"
    np.savez(one, arr_0=photos[:1])
    three = tmp_path / "three.npz"
    np.savez(three, arr_0=photos[:3])
    missing_weights = str(tmp_path / "never-read.safetensors")  # counts are checked before weights are needed
    assert main([str(ref), str(one), "--inception-path", missing_weights]) == 2
    assert "FID/sFID need at least 2" in capsys.readouterr().err
    assert main([str(ref), str(three), "--inception-path", missing_weights]) == 2
    err = capsys.readouterr().err
    assert "precision/recall need at least 4" in err and "--no-pr" in err
    bad = tmp_path / "gray.npz"
    np.savez(bad, arr_0=np.zeros((4, 8, 8), np.uint8))
    assert main([str(ref), str(bad), "--inception-path", missing_weights]) == 2
    assert "NHWC" in capsys.readouterr().err


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "evaluations.c2i.evaluator", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for flag in ("--device", "--batch-size", "--inception-path", "--out", "--fid-method"):
        assert flag in out.stdout
