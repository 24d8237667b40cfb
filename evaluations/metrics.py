"""Sample-quality metrics with the ADM evaluator's formulas (guided-diffusion ``evaluations/evaluator.py``).

* FID / sFID: ``|mu1 - mu2|^2 + Tr S1 + Tr S2 - 2 Tr sqrtm(S1 S2)`` with S1 the *sample* covariance and S2 the
  reference one (the evaluator calls ``sample_stats.frechet_distance(ref_stats)``); when ``sqrtm`` returns non-finite
  values, 1e-6 is added to both diagonals and the root recomputed; a complex root whose diagonal has an imaginary part
  beyond 1e-3 (absolute) raises, otherwise the real part is used. mu is the float32 mean and Sigma the unbiased
  ``np.cov(rowvar=False)`` of the activations.
* Inception Score: ``softmax(pool_3 @ W)`` (no bias), then chunks of ``split_size`` = 5000 images (10 chunks for 50k);
  per chunk ``exp(mean_i sum_k p_ik (log p_ik - log mean_i p_ik))``; the score is the mean over chunks (no std).
* Precision / recall (improved P&R, k = 3): squared L2 distances ``max(|u|^2 - 2 u.v + |v|^2, 0)`` computed in fp16
  (fp32 recompute when any fp16 value is non-finite) in row/column blocks of 10,000; a point's radius is the distance
  to its 4th-smallest entry in its own set (the point itself is the first); precision is the share of samples inside
  at least one reference ball, recall the share of references inside at least one sample ball.

Everything tensor-heavy runs in torch on any device; the FID algebra uses numpy/scipy in float64 as the evaluator does.
"""
from __future__ import annotations

import io
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from scipy import linalg

MIN_FID_SAMPLES = 2          # np.cov needs two rows for an unbiased covariance
PR_NEIGHBOURHOOD = 3         # k of the k-NN radius
MIN_PR_SAMPLES = PR_NEIGHBOURHOOD + 1
IS_SPLIT_SIZE = 5000


class MetricInputError(ValueError):
    """Inputs too small or malformed for a metric. The message names the metric and the count it needs."""


# --------------------------------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------------------------------

def _sqrtm(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's "matrix is singular" / deprecation chatter; handled below
        out = linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2) from two symmetric eigensolves (torch float64)."""
    s1 = torch.as_tensor(np.asarray(sigma1, dtype=np.float64))
    s2 = torch.as_tensor(np.asarray(sigma2, dtype=np.float64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the threaded CPU eigensolver is several times slower at this size on small machines
    try:
        w, v = torch.linalg.eigh((s1 + s1.T) / 2)
        root = (v * w.clamp_min(0).sqrt()) @ v.T
        m = root @ s2 @ root
        ev = torch.linalg.eigvalsh((m + m.T) / 2)
    finally:
        torch.set_num_threads(threads)
    return float(ev.clamp_min(0).sqrt().sum())


GRAM_MAX_PAIRS = 10 ** 8


def _trace_sqrt_product_gram(acts1: np.ndarray, acts2: np.ndarray) -> float:
    """Tr sqrt(S1 S2) straight from the activations: with centred A (n1 x D), B (n2 x D) and S = X^T X / (n - 1),
    the non-zero eigenvalues of S1 S2 are the squared singular values of A B^T / sqrt((n1 - 1)(n2 - 1))."""
    a = np.asarray(acts1, dtype=np.float64)
    b = np.asarray(acts2, dtype=np.float64)
    a = a - a.mean(0)
    b = b - b.mean(0)
    sv = np.linalg.svd(a @ b.T, compute_uv=False)
    return float(sv.sum() / np.sqrt((len(a) - 1) * (len(b) - 1)))


@dataclass
class FIDStatistics:
    mu: np.ndarray
    sigma: np.ndarray
    activations: np.ndarray | None = field(default=None, repr=False)  # kept for method="gram"

    def frechet_distance(self, other: "FIDStatistics", eps: float = 1e-6, method: str = "sqrtm") -> float:
        """ADM's ``FIDStatistics.frechet_distance``; ``self`` is the sample set, ``other`` the reference.

        ``method="sqrtm"`` is the evaluator's computation (scipy ``sqrtm`` of the product, eps retry, imaginary-part
        check). ``method="eigh"`` gets Tr sqrt(S1 S2) from symmetric eigendecompositions instead
        (``Tr sqrt(S1^1/2 S2 S1^1/2)``, negative round-off eigenvalues clipped to 0): the same number up to round-off
        for covariance matrices, several times faster, and it never raises on tiny imaginary parts.
        ``method="gram"`` needs both statistics built with ``keep_activations=True`` and uses the exact identity
        Tr sqrt(S1 S2) = sum of singular values of A1 A2^T / sqrt((n1-1)(n2-1)) (A = centred activations): instant
        for small sets (n << 2048), where the covariances are singular.
        """
        mu1, sigma1 = np.atleast_1d(self.mu), np.atleast_2d(self.sigma)
        mu2, sigma2 = np.atleast_1d(other.mu), np.atleast_2d(other.sigma)
        if mu1.shape != mu2.shape:
            raise MetricInputError(f"Training and test mean vectors have different lengths: {mu1.shape}, {mu2.shape}")
        if sigma1.shape != sigma2.shape:
            raise MetricInputError(
                f"Training and test covariances have different dimensions: {sigma1.shape}, {sigma2.shape}")
        diff = mu1 - mu2
        if method in ("eigh", "gram"):
            if method == "eigh":
                tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
            else:
                if self.activations is None or other.activations is None:
                    raise MetricInputError("FID method 'gram' needs the activations of both sets; precomputed "
                                           "statistics (an npz with 'mu') only allow 'sqrtm' or 'eigh'")
                if len(self.activations) * len(other.activations) > GRAM_MAX_PAIRS:
                    raise MetricInputError("FID method 'gram' is meant for small sets; use 'sqrtm' or 'eigh'")
                tr_covmean = _trace_sqrt_product_gram(self.activations, other.activations)
            return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
        if method != "sqrtm":
            raise ValueError(f"FID method must be 'sqrtm' (ADM), 'eigh' or 'gram', got {method!r}")
        covmean = _sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates",
                          stacklevel=2)
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
            covmean = covmean.real
        return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def compute_statistics(activations: np.ndarray, what: str = "activations",
                       keep_activations: bool = False) -> FIDStatistics:
    """mu = mean (in the activations' dtype, float32 in the evaluator), Sigma = unbiased covariance (float64).

    ``keep_activations`` keeps a reference to the activations (no copy) for ``frechet_distance(method="gram")``."""
    activations = np.asarray(activations)
    if activations.ndim != 2:
        raise MetricInputError(f"{what}: expected a [N, D] activation matrix, got shape {activations.shape}")
    if activations.shape[0] < MIN_FID_SAMPLES:
        raise MetricInputError(
            f"{what}: FID/sFID need at least {MIN_FID_SAMPLES} images to estimate a covariance, got "
            f"{activations.shape[0]}")
    return FIDStatistics(np.mean(activations, axis=0), np.cov(activations, rowvar=False),
                         activations if keep_activations else None)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, method: str = "sqrtm") -> float:
    return FIDStatistics(np.asarray(mu1), np.asarray(sigma1)).frechet_distance(
        FIDStatistics(np.asarray(mu2), np.asarray(sigma2)), eps=eps, method=method)


# --------------------------------------------------------------------------------------------------------------------
# Inception Score
# --------------------------------------------------------------------------------------------------------------------

def inception_score(probs: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> float:
    """ADM's ``compute_inception_score`` on softmax outputs ``probs`` [N, C] (float32 numpy arithmetic)."""
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise MetricInputError(f"Inception Score: expected [N, classes] probabilities, got shape {probs.shape}")
    if probs.shape[0] < 2:
        raise MetricInputError(f"Inception Score needs at least 2 images, got {probs.shape[0]}")
    if split_size < 1:
        raise MetricInputError(f"Inception Score split size must be positive, got {split_size}")
    scores = []
    for i in range(0, len(probs), split_size):
        part = probs[i: i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        kl = np.mean(np.sum(kl, 1))
        scores.append(np.exp(kl))
    return float(np.mean(scores))


# --------------------------------------------------------------------------------------------------------------------
# Precision / recall
# --------------------------------------------------------------------------------------------------------------------

def _r16(x: torch.Tensor) -> torch.Tensor:
    """Round float32 values to the nearest float16 (overflow -> inf) and back: one fp16 arithmetic result."""
    return x.to(torch.float16).to(torch.float32)


def pairwise_sq_distances(u: torch.Tensor, v: torch.Tensor, precision: str = "fp16") -> torch.Tensor:
    """Squared L2 distances ``max(|u|^2 - 2 u v^T + |v|^2, 0)`` as the evaluator's DistanceBlock computes them.

    ``fp16`` emulates the evaluator's half-precision graph on any device: inputs rounded to fp16, every elementwise
    result rounded to fp16, reductions/matmul accumulated in fp32 and rounded once (as GPU half kernels do). When any
    value is non-finite (fp16 overflow), the block is recomputed in fp32, like the graph's ``tf.cond``.
    """
    u = u.to(torch.float32)
    v = v.to(torch.float32)
    if precision == "fp16":
        u16, v16 = _r16(u), _r16(v)
        norm_u = _r16(_r16(u16 * u16).sum(1))
        norm_v = _r16(_r16(v16 * v16).sum(1))
        mm = _r16(u16 @ v16.t())
        d = _r16(_r16(norm_u[:, None] - _r16(2 * mm)) + norm_v[None, :])
        d = torch.clamp_min(d, 0.0)
        if bool(torch.isfinite(d).all()):
            return d
    elif precision != "fp32":
        raise ValueError(f"distance precision must be 'fp16' (ADM) or 'fp32', got {precision!r}")
    norm_u = (u * u).sum(1)
    norm_v = (v * v).sum(1)
    return torch.clamp_min(norm_u[:, None] - 2 * (u @ v.t()) + norm_v[None, :], 0.0)


class ManifoldEstimator:
    """k-NN manifold radii and precision/recall with the evaluator's row/column blocking."""

    def __init__(self, device: str | torch.device = "cpu", row_batch_size: int = 10000, col_batch_size: int = 10000,
                 nhood_sizes: tuple[int, ...] = (PR_NEIGHBOURHOOD,), precision: str = "fp16"):
        self.device = torch.device(device)
        self.row_batch_size = row_batch_size
        self.col_batch_size = col_batch_size
        self.nhood_sizes = tuple(nhood_sizes)
        self.precision = precision

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=self.device)

    def manifold_radii(self, features: np.ndarray) -> np.ndarray:
        n = len(features)
        kmax = max(self.nhood_sizes)
        if n < kmax + 1:
            raise MetricInputError(
                f"precision/recall need at least {kmax + 1} images per set (k={kmax} neighbours plus the point "
                f"itself), got {n}")
        radii = np.zeros([n, len(self.nhood_sizes)], dtype=np.float32)
        idx = torch.tensor(self.nhood_sizes, device=self.device)
        for b1 in range(0, n, self.row_batch_size):
            e1 = min(b1 + self.row_batch_size, n)
            rows = self._t(features[b1:e1])
            block = torch.cat([pairwise_sq_distances(rows, self._t(features[b2:min(b2 + self.col_batch_size, n)]),
                                                     self.precision)
                               for b2 in range(0, n, self.col_batch_size)], dim=1)
            smallest = torch.topk(block, kmax + 1, dim=1, largest=False, sorted=True).values
            radii[b1:e1] = smallest.index_select(1, idx).cpu().numpy()
        return radii

    def evaluate_pr(self, features_1: np.ndarray, radii_1: np.ndarray, features_2: np.ndarray,
                    radii_2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(precision, recall) arrays over the neighbourhood sizes; set 1 is the reference, set 2 the samples."""
        status_1 = torch.zeros([len(features_1), radii_2.shape[1]], dtype=torch.bool, device=self.device)
        status_2 = torch.zeros([len(features_2), radii_1.shape[1]], dtype=torch.bool, device=self.device)
        for b1 in range(0, len(features_1), self.row_batch_size):
            e1 = b1 + self.row_batch_size
            batch_1, r1 = self._t(features_1[b1:e1]), self._t(radii_1[b1:e1])
            for b2 in range(0, len(features_2), self.col_batch_size):
                e2 = b2 + self.col_batch_size
                batch_2, r2 = self._t(features_2[b2:e2]), self._t(radii_2[b2:e2])
                dist = pairwise_sq_distances(batch_1, batch_2, self.precision)[..., None]
                status_1[b1:e1] |= (dist <= r2[None]).any(dim=1)
                status_2[b2:e2] |= (dist <= r1[:, None]).any(dim=0)
        return (status_2.double().mean(0).cpu().numpy(), status_1.double().mean(0).cpu().numpy())


def precision_recall(ref_features: np.ndarray, sample_features: np.ndarray, device: str | torch.device = "cpu",
                     precision: str = "fp16", row_batch_size: int = 10000, col_batch_size: int = 10000
                     ) -> tuple[float, float]:
    est = ManifoldEstimator(device, row_batch_size, col_batch_size, precision=precision)
    radii_1 = est.manifold_radii(ref_features)
    radii_2 = est.manifold_radii(sample_features)
    pr = est.evaluate_pr(ref_features, radii_1, sample_features, radii_2)
    return float(pr[0][0]), float(pr[1][0])


# --------------------------------------------------------------------------------------------------------------------
# npz batches
# --------------------------------------------------------------------------------------------------------------------

def npz_keys(path) -> list[str]:
    with zipfile.ZipFile(path, "r") as zf:
        return [n[:-4] if n.endswith(".npy") else n for n in zf.namelist()]


@contextmanager
def open_npz_array(path, name: str = "arr_0") -> Iterator["NpzArrayReader"]:
    """Stream one array of an ``.npz`` in batches without loading it (50k 256-px images are ~10 GB)."""
    with open(path, "rb") as fh, zipfile.ZipFile(fh, "r") as zf:
        member = f"{name}.npy"
        if member not in zf.namelist():
            raise MetricInputError(f"{path}: missing {name!r} in npz file (keys: {npz_keys(path)})")
        with zf.open(member, "r") as arr_f:
            version = np.lib.format.read_magic(arr_f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(arr_f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(arr_f)
            else:
                fortran, dtype, shape = True, None, None
            if fortran or dtype is None or dtype.hasobject:
                with np.load(path) as obj:
                    yield NpzArrayReader(array=obj[name])
            else:
                yield NpzArrayReader(stream=arr_f, shape=tuple(shape), dtype=dtype)


class NpzArrayReader:
    def __init__(self, array: np.ndarray | None = None, stream: io.IOBase | None = None, shape=None, dtype=None):
        self.array, self.stream = array, stream
        self.shape = tuple(array.shape) if array is not None else shape
        self.dtype = array.dtype if array is not None else dtype
        self.idx = 0

    def __len__(self) -> int:
        return self.shape[0]

    def read_batch(self, batch_size: int) -> np.ndarray | None:
        if self.idx >= self.shape[0]:
            return None
        bs = min(batch_size, self.shape[0] - self.idx)
        if self.array is not None:
            out = self.array[self.idx: self.idx + bs]
        else:
            count = bs * int(np.prod(self.shape[1:]))
            nbytes = count * self.dtype.itemsize
            data = bytearray()
            while len(data) < nbytes:
                chunk = self.stream.read(nbytes - len(data))
                if not chunk:
                    raise MetricInputError(f"npz array ended early: expected {nbytes} bytes, got {len(data)}")
                data += chunk
            out = np.frombuffer(bytes(data), dtype=self.dtype).reshape((bs, *self.shape[1:]))
        self.idx += bs
        return out

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        while (batch := self.read_batch(batch_size)) is not None:
            yield batch


def read_precomputed_stats(path) -> tuple[FIDStatistics, FIDStatistics] | None:
    """``(pool, spatial)`` statistics when the npz has a ``mu`` key (ADM reference batches), else None."""
    if "mu" not in npz_keys(path):
        return None
    with np.load(path) as obj:
        missing = [k for k in ("mu", "sigma", "mu_s", "sigma_s") if k not in obj.files]
        if missing:
            raise MetricInputError(f"{path}: has 'mu' but lacks {missing}; an ADM reference batch has all four")
        return (FIDStatistics(obj["mu"], obj["sigma"]), FIDStatistics(obj["mu_s"], obj["sigma_s"]))
