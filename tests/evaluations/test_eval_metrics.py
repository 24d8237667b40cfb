"""ADM metric formulas against independent numpy/scipy computations and edge cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg, stats

import evaluations.metrics as M
from evaluations.metrics import (
    FIDStatistics,
    ManifoldEstimator,
    MetricInputError,
    compute_statistics,
    frechet_distance,
    inception_score,
    open_npz_array,
    pairwise_sq_distances,
    precision_recall,
    read_precomputed_stats,
)


def _random_cov(rng, d, n=None):
    a = rng.normal(size=(n or 3 * d, d))
    return np.cov(a, rowvar=False)


# ---------------------------------------------------------------------------------------------------------------- FID

def test_fid_diagonal_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, 12), rng.uniform(0.1, 3, 12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    for method in ("sqrtm", "eigh"):
        assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method) == pytest.approx(expected, rel=1e-10)


def test_fid_full_covariance_against_scipy_sqrtm():
    rng = np.random.default_rng(1)
    s1, s2 = _random_cov(rng, 32), _random_cov(rng, 32)
    mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
    root = linalg.sqrtm(s1 @ s2)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real
    # an eigenvalue route, independent of sqrtm: Tr sqrt(S1 S2) = sum sqrt(eig(S1 S2))
    alt = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(
        np.linalg.eigvals(s1 @ s2).astype(complex)).real.sum()
    assert expected == pytest.approx(alt, rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu1, s1, mu2, s2, method="eigh") == pytest.approx(expected, rel=1e-8)
    # the evaluator's argument order: sample (self) first, reference second
    assert FIDStatistics(mu1, s1).frechet_distance(FIDStatistics(mu2, s2)) == pytest.approx(expected, rel=1e-10)


def test_fid_singular_covariances_from_few_samples():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 40)).astype(np.float32)          # rank-5 covariance in 40 dims
    y = rng.normal(size=(6, 40)).astype(np.float32) + 0.5
    sx, sy = compute_statistics(x, keep_activations=True), compute_statistics(y, keep_activations=True)
    assert abs(sx.frechet_distance(sx)) < 1e-5
    a, b = sx.frechet_distance(sy), sx.frechet_distance(sy, method="eigh")
    c = sx.frechet_distance(sy, method="gram")
    assert a > 0 and a == pytest.approx(b, rel=1e-6) and a == pytest.approx(c, rel=1e-6)
    with pytest.raises(MetricInputError, match="activations of both"):
        compute_statistics(x).frechet_distance(sy, method="gram")


def test_fid_gram_equals_sqrtm_full_rank():
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(50, 10)), rng.normal(size=(70, 10)) * 1.5 + 0.2
    sx, sy = compute_statistics(x, keep_activations=True), compute_statistics(y, keep_activations=True)
    assert sx.frechet_distance(sy, method="gram") == pytest.approx(sx.frechet_distance(sy), rel=1e-9)


def test_fid_non_finite_root_retries_with_eps(monkeypatch):
    rng = np.random.default_rng(3)
    s1, s2 = _random_cov(rng, 8), _random_cov(rng, 8)
    mu = np.zeros(8)
    real_sqrtm = M._sqrtm
    calls = []

    def flaky(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(M, "_sqrtm", flaky)
    with pytest.warns(UserWarning, match="adding 1e-06 to diagonal"):
        got = frechet_distance(mu, s1, mu, s2)
    off = np.eye(8) * 1e-6
    np.testing.assert_allclose(calls[1], (s1 + off) @ (s2 + off))
    expected = np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm((s1 + off) @ (s2 + off))).real
    assert got == pytest.approx(expected, rel=1e-10)


def test_fid_imaginary_component_rules(monkeypatch):
    s = np.eye(4)
    monkeypatch.setattr(M, "_sqrtm", lambda a: a.astype(complex) + 1e-5j)
    assert frechet_distance(np.zeros(4), s, np.zeros(4), s) == pytest.approx(0.0, abs=1e-12)  # tiny imag dropped
    monkeypatch.setattr(M, "_sqrtm", lambda a: a.astype(complex) + 0.1j * np.eye(4))
    with pytest.raises(ValueError, match="Imaginary component"):
        frechet_distance(np.zeros(4), s, np.zeros(4), s)


def test_fid_shape_mismatch_and_small_counts():
    with pytest.raises(MetricInputError, match="different lengths"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(MetricInputError, match="at least 2"):
        compute_statistics(np.zeros((1, 5), np.float32))


def test_statistics_match_numpy_conventions():
    x = np.random.default_rng(4).normal(size=(50, 7)).astype(np.float32)
    st = compute_statistics(x)
    assert st.mu.dtype == np.float32 and st.sigma.dtype == np.float64
    np.testing.assert_allclose(st.sigma, np.cov(x.astype(np.float64).T, ddof=1), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------- IS

def _independent_is(probs, split):
    scores = []
    for i in range(0, len(probs), split):
        part = probs[i:i + split].astype(np.float64)
        marginal = part.mean(0)
        scores.append(np.exp(np.mean([stats.entropy(p, marginal) for p in part])))
    return float(np.mean(scores))


def test_inception_score_identical_predictions_is_one():
    p = np.random.default_rng(5).dirichlet(np.ones(1008), size=1).astype(np.float32)
    assert inception_score(np.repeat(p, 64, 0)) == pytest.approx(1.0, abs=1e-5)


def test_inception_score_against_scipy_entropy_with_splits():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(23, 50)) * 3
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    for split in (5, 10, 5000):
        assert inception_score(probs, split) == pytest.approx(_independent_is(probs, split), rel=1e-4)
    confident = np.full((10, 10), 1e-6, np.float32)
    confident[np.arange(10), np.arange(10)] = 1 - 9e-6
    assert inception_score(confident) == pytest.approx(10.0, rel=1e-3)  # 10 sure, distinct classes -> ~10


def test_inception_score_rejects_tiny_input():
    with pytest.raises(MetricInputError, match="at least 2"):
        inception_score(np.ones((1, 1008), np.float32) / 1008)


# -------------------------------------------------------------------------------------------------- precision/recall

def _brute_force_pr(ref, sample, k=3):
    d = lambda a, b: np.maximum((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None], 0)  # noqa: E731
    r_ref = np.sort(d(ref, ref), 1)[:, k]
    r_sam = np.sort(d(sample, sample), 1)[:, k]
    cross = d(ref, sample)
    precision = np.mean((cross <= r_ref[:, None]).any(0))
    recall = np.mean((cross <= r_sam[None, :]).any(1))
    return precision, recall


def test_precision_recall_against_brute_force_with_blocking():
    rng = np.random.default_rng(7)
    ref = rng.normal(size=(37, 16)).astype(np.float32)
    sample = (rng.normal(size=(29, 16)) * 0.9 + 0.8).astype(np.float32)
    expected = _brute_force_pr(ref.astype(np.float64), sample.astype(np.float64))
    got = precision_recall(ref, sample, precision="fp32", row_batch_size=7, col_batch_size=5)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0 < got[0] < 1 and 0 < got[1] < 1
    assert precision_recall(ref, sample, precision="fp32") == got  # blocking does not change the answer


def test_precision_recall_sanity():
    rng = np.random.default_rng(8)
    ref = rng.normal(size=(40, 8)).astype(np.float32)
    assert precision_recall(ref, ref) == (1.0, 1.0)
    assert precision_recall(ref, ref + 100) == (0.0, 0.0)
    inner = ref[np.linalg.norm(ref, axis=1) < np.median(np.linalg.norm(ref, axis=1))] * 0.5
    p, r = precision_recall(ref, inner, precision="fp32")
    assert p == 1.0 and r < 1.0  # a shrunken core of the reference: precise, not covering


def test_radii_are_fourth_smallest_self_distance():
    pts = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]], np.float32)
    radii = ManifoldEstimator("cpu", precision="fp32").manifold_radii(pts)
    # sorted squared distances from 0: 0, 1, 9, 36, 100 -> index 3 is 36
    assert radii[0, 0] == 36.0 and radii.shape == (5, 1)


def test_fp16_distances_emulate_half_precision_and_fall_back():
    rng = np.random.default_rng(9)
    u = torch.from_numpy(rng.uniform(0, 3, size=(20, 2048)).astype(np.float32))
    v = torch.from_numpy(rng.uniform(0, 3, size=(30, 2048)).astype(np.float32))
    d16, d32 = pairwise_sq_distances(u, v, "fp16"), pairwise_sq_distances(u, v, "fp32")
    assert torch.equal(d16, d16.half().float())                  # every value is an fp16 number
    assert not torch.equal(d16, d32)
    torch.testing.assert_close(d16, d32, rtol=5e-3, atol=8.0)     # fp16 spacing is 4-8 at |u|^2 ~ 6000
    big = u * 10  # |u|^2 ~ 6e5 > fp16 max: the fp16 graph overflows, the fp32 branch answers
    assert torch.equal(pairwise_sq_distances(big, v, "fp16"), pairwise_sq_distances(big, v, "fp32"))
    with pytest.raises(ValueError, match="precision"):
        pairwise_sq_distances(u, v, "bf16")


def test_precision_recall_rejects_tiny_sets():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(MetricInputError, match="at least 4"):
        precision_recall(x, np.ones((10, 4), np.float32))


# ------------------------------------------------------------------------------------------------------------ npz I/O

@pytest.mark.parametrize("compressed", [False, True])
def test_npz_streaming_reader(tmp_path, compressed):
    arr = np.random.default_rng(10).integers(0, 256, size=(11, 5, 4, 3), dtype=np.uint8)
    path = tmp_path / "a.npz"
    (np.savez_compressed if compressed else np.savez)(path, arr_0=arr, other=np.zeros(2))
    with open_npz_array(path) as reader:
        assert len(reader) == 11 and reader.dtype == np.uint8
        batches = list(reader.batches(4))
    assert [len(b) for b in batches] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(batches), arr)
    with pytest.raises(MetricInputError, match="missing 'arr_1'"):
        with open_npz_array(path, "arr_1"):
            pass


def test_npz_fortran_order_falls_back_to_full_load(tmp_path):
    arr = np.asfortranarray(np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3))
    np.savez(tmp_path / "f.npz", arr_0=arr)
    with open_npz_array(tmp_path / "f.npz") as reader:
        np.testing.assert_array_equal(np.concatenate(list(reader.batches(1))), arr)


def test_precomputed_stats_keys(tmp_path):
    np.savez(tmp_path / "ref.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=np.zeros(3), sigma=np.eye(3),
             mu_s=np.zeros(2), sigma_s=np.eye(2))
    pool, spatial = read_precomputed_stats(tmp_path / "ref.npz")
    assert pool.mu.shape == (3,) and spatial.sigma.shape == (2, 2)
    np.savez(tmp_path / "bad.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=np.zeros(3))
    with pytest.raises(MetricInputError, match="sigma"):
        read_precomputed_stats(tmp_path / "bad.npz")
    np.savez(tmp_path / "plain.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    assert read_precomputed_stats(tmp_path / "plain.npz") is None
