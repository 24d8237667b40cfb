"""ADM-compatible sample evaluator in PyTorch: ``python -m evaluations.c2i.evaluator REF.npz SAMPLE.npz``.

Same inputs, steps and printed lines as guided-diffusion's TensorFlow ``evaluations/evaluator.py`` (which the original
GigaTok runs in a second environment), computed with :mod:`evaluations.inception` and :mod:`evaluations.metrics`:

1. Inception activations (pool_3 and the 7-channel ``mixed_6/conv`` features) of the reference ``arr_0`` and of the
   sample ``arr_0``, in batches of 64, images fed as float [0, 255] at their stored size.
2. Statistics: an npz with a ``mu`` key supplies ``mu``/``sigma``/``mu_s``/``sigma_s`` as stored; otherwise they are
   computed from its activations.
3. Prints ``Inception Score:``, ``FID:``, ``sFID:``, ``Precision:``, ``Recall:`` lines (stdout; progress goes to
   stderr), writes them to ``SAMPLE.txt`` (the GigaTok evaluator's side file the sampling scripts parse), and writes
   ``metrics.json`` with the reference file's sha256 and the Inception weights' sha256.

Python API: :func:`evaluate_npz` (used by the sampling scripts' CFG search and by reconstruction rFID).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from evaluations.inception import InceptionWeightsError, TFInceptionV3, load_inception, strict_fp32
from evaluations.metrics import (
    IS_SPLIT_SIZE,
    MIN_FID_SAMPLES,
    MIN_PR_SAMPLES,
    FIDStatistics,
    MetricInputError,
    compute_statistics,
    inception_score,
    open_npz_array,
    precision_recall,
    read_precomputed_stats,
)
from utils.checkpoint import sha256_file

METRIC_LINES = (("Inception Score", "inception_score"), ("FID", "fid"), ("sFID", "sfid"),
                ("Precision", "precision"), ("Recall", "recall"))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Evaluator:
    """Inception features + ADM metrics on one device."""

    def __init__(self, inception: TFInceptionV3 | None = None, inception_path: str | os.PathLike | None = None,
                 device: str | torch.device | None = None, batch_size: int | None = None,
                 softmax_batch_size: int = 512,
                 distance_precision: str = "fp16", row_batch_size: int = 10000, col_batch_size: int = 10000,
                 progress: bool = True):
        from utils.distributed import pick_device
        self.device = pick_device(None if device is None else str(device))
        self.model = (inception if inception is not None else load_inception(inception_path, self.device))
        self.model = self.model.to(self.device).eval()
        # ADM's 64 on accelerators; 16 on CPU, where smaller batches run ~1.3x faster (cache-resident activations).
        # The batch size does not change any value.
        self.batch_size = batch_size or (16 if torch.device(self.device).type == "cpu" else 64)
        self.softmax_batch_size = softmax_batch_size
        self.distance_precision = distance_precision
        self.row_batch_size, self.col_batch_size = row_batch_size, col_batch_size
        self.progress = progress

    # -- activations ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def compute_activations(self, batches, total: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """pool_3 [N, 2048] and spatial [N, 2023] float32 activations of NHWC image batches in [0, 255]."""
        pools, spatials = [], []
        bar = tqdm(total=total, disable=not (self.progress and total), desc="inception", unit="img",
                   dynamic_ncols=True, file=sys.stderr)
        with strict_fp32():
            for batch in batches:
                batch = np.asarray(batch)
                if batch.ndim != 4 or batch.shape[-1] != 3:
                    raise MetricInputError(f"expected NHWC RGB images, got a batch of shape {batch.shape}")
                x = torch.from_numpy(batch.astype(np.float32)).to(self.device).permute(0, 3, 1, 2)
                feats = self.model(x)
                pools.append(feats.pool.float().cpu().numpy())
                spatials.append(feats.spatial.float().cpu().numpy())
                bar.update(len(batch))
        bar.close()
        if not pools:
            raise MetricInputError("no images: the npz array arr_0 is empty")
        return np.concatenate(pools, 0), np.concatenate(spatials, 0)

    def read_activations(self, npz_path) -> tuple[np.ndarray, np.ndarray]:
        with open_npz_array(npz_path, "arr_0") as reader:
            if len(reader.shape) != 4 or reader.shape[-1] != 3:
                raise MetricInputError(f"{npz_path}: arr_0 must be NHWC RGB images, got shape {reader.shape}")
            if reader.dtype != np.uint8:
                _log(f"warning: {npz_path}: arr_0 has dtype {reader.dtype}, expected uint8 in [0, 255]")
            return self.compute_activations(reader.batches(self.batch_size), total=len(reader))

    def read_statistics(self, npz_path, activations) -> tuple[FIDStatistics, FIDStatistics]:
        pre = read_precomputed_stats(npz_path)
        if pre is not None:
            return pre
        return (compute_statistics(activations[0], f"{npz_path} pool_3", keep_activations=True),
                compute_statistics(activations[1], f"{npz_path} spatial", keep_activations=True))

    # -- metrics ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def compute_inception_score(self, pool_activations: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> float | None:
        if not self.model.has_logits:
            _log("warning: the Inception weights have no softmax layer; Inception Score unavailable")
            return None
        probs = []
        with strict_fp32():
            for i in range(0, len(pool_activations), self.softmax_batch_size):
                acts = torch.from_numpy(np.ascontiguousarray(pool_activations[i: i + self.softmax_batch_size]))
                probs.append(self.model.probabilities(acts.to(self.device)).cpu().numpy())
        return inception_score(np.concatenate(probs, 0).astype(np.float32), split_size)

    def compute_prec_recall(self, ref_pool: np.ndarray, sample_pool: np.ndarray) -> tuple[float, float]:
        with strict_fp32():
            return precision_recall(ref_pool, sample_pool, self.device, self.distance_precision,
                                    self.row_batch_size, self.col_batch_size)


# --------------------------------------------------------------------------------------------------------------------
# Reference activation cache
# --------------------------------------------------------------------------------------------------------------------

def _cache_path(ref: Path, ref_sha: str, weights_sha: str) -> list[Path]:
    name = f"{ref.name}.inception-{weights_sha[:12]}-{ref_sha[:12]}.npz"
    return [ref.with_name(name), Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gigatok" / name]


def _load_cached(paths: list[Path]):
    for p in paths:
        if p.is_file():
            try:
                with np.load(p) as obj:
                    return obj["pool"], obj["spatial"]
            except Exception:  # noqa: BLE001 - a broken cache is recomputed
                continue
    return None


def _save_cached(paths: list[Path], pool: np.ndarray, spatial: np.ndarray) -> Path | None:
    for p in paths:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp.npz")
            np.savez(tmp, pool=pool, spatial=spatial)
            os.replace(tmp, p)
            return p
        except OSError:
            continue
    return None


# --------------------------------------------------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------------------------------------------------

def evaluate_npz(ref, sample, device: str | torch.device | None = None, batch_size: int | None = None,
                 inception_path: str | os.PathLike | None = None, evaluator: Evaluator | None = None,
                 cache_ref: bool = False, split_size: int = IS_SPLIT_SIZE, distance_precision: str = "fp16",
                 compute_pr: bool = True, fid_method: str = "sqrtm",
                 out_json: str | os.PathLike | None = None,
                 out_txt: str | os.PathLike | None = None, verbose: bool = True) -> dict:
    """Evaluate ``sample`` against ``ref`` (both ADM-style npz files); returns a JSON-ready dict.

    Keys: inception_score (None when the weights lack the softmax layer), fid, sfid, precision, recall (None when
    ``compute_pr`` is False), counts, file paths and sha256s. ``out_json``/``out_txt`` also write the results.
    """
    ref, sample = Path(ref), Path(sample)
    for p in (ref, sample):
        if not p.is_file():
            raise FileNotFoundError(f"npz file {str(p)!r} does not exist")
    _check_images(ref, sample)
    _check_counts(ref, sample, compute_pr)
    _check_writable(out_json, out_txt)
    if fid_method == "gram" and any(read_precomputed_stats(p) is not None for p in (ref, sample)):
        raise MetricInputError("FID method 'gram' needs the activations of both sets, but an npz has precomputed "
                               "statistics ('mu', ...); use --fid-method sqrtm or eigh")
    ev = evaluator or Evaluator(inception_path=inception_path, device=device, batch_size=batch_size,
                                distance_precision=distance_precision, progress=verbose)
    log = _log if verbose else (lambda msg: None)
    ref_sha = sha256_file(ref)
    weights_sha = getattr(ev.model, "weights_sha256", "")

    ref_acts = None
    cache_paths = _cache_path(ref, ref_sha, weights_sha) if cache_ref and weights_sha else []
    if cache_paths:
        ref_acts = _load_cached(cache_paths)
        if ref_acts is not None:
            log("using cached reference activations")
    if ref_acts is None:
        log("computing reference batch activations...")
        ref_acts = ev.read_activations(ref)
        if cache_paths:
            saved = _save_cached(cache_paths, *ref_acts)
            if saved:
                log(f"cached reference activations in {saved}")
    log("computing/reading reference batch statistics...")
    ref_stats, ref_stats_spatial = ev.read_statistics(ref, ref_acts)
    log("computing sample batch activations...")
    sample_acts = ev.read_activations(sample)
    log("computing/reading sample batch statistics...")
    sample_stats, sample_stats_spatial = ev.read_statistics(sample, sample_acts)
    if len(sample_acts[0]) < 2048:
        log(f"warning: only {len(sample_acts[0])} sample images; with fewer images than feature dimensions (2048) "
            "the covariance is singular and FID is strongly biased (ADM uses 50,000)")

    log("Computing evaluations...")
    result = {
        "inception_score": ev.compute_inception_score(sample_acts[0], split_size),
        "fid": sample_stats.frechet_distance(ref_stats, method=fid_method),
        "sfid": sample_stats_spatial.frechet_distance(ref_stats_spatial, method=fid_method),
        "precision": None,
        "recall": None,
    }
    if compute_pr:
        result["precision"], result["recall"] = ev.compute_prec_recall(ref_acts[0], sample_acts[0])
    result.update({
        "num_reference_images": int(len(ref_acts[0])),
        "num_sample_images": int(len(sample_acts[0])),
        "reference": str(ref.resolve()),
        "reference_sha256": ref_sha,
        "reference_stats": "precomputed" if read_precomputed_stats(ref) is not None else "computed from arr_0",
        "sample": str(sample.resolve()),
        "inception_weights": getattr(ev.model, "weights_path", None),
        "inception_weights_sha256": weights_sha or None,
        "device": str(ev.device),
        "distance_precision": ev.distance_precision,
        "is_split_size": split_size,
        "fid_method": fid_method,
        "evaluator": "gigatok evaluations.c2i.evaluator (PyTorch port of the ADM evaluator)",
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "scipy": __import__("scipy").__version__},
    })
    if out_txt is not None:
        Path(out_txt).write_text("".join(f"{line}\n" for line in format_lines(result)))
    if out_json is not None:
        out_json = Path(out_json)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _npz_header(path: Path) -> tuple[tuple, np.dtype]:
    with open_npz_array(path, "arr_0") as reader:
        if len(reader.shape) != 4 or reader.shape[-1] != 3:
            raise MetricInputError(f"{path}: arr_0 must be NHWC RGB images, got shape {reader.shape}")
        return tuple(reader.shape), reader.dtype


def _npz_count(path: Path) -> int:
    return _npz_header(path)[0][0]


def _check_images(ref: Path, sample: Path) -> None:
    """uint8 images of one size in both sets: a float [0, 1] array would be scored as near-black images, and sets of
    different resolutions would be compared after the Inception resize hides the difference."""
    (ref_shape, ref_dtype), (smp_shape, smp_dtype) = _npz_header(ref), _npz_header(sample)
    for path, dtype in ((ref, ref_dtype), (sample, smp_dtype)):
        if dtype != np.uint8:
            raise MetricInputError(f"{path}: arr_0 has dtype {dtype}; the evaluator needs uint8 images in [0, 255] "
                                   "(for floats in [0, 1]: (x * 255).round().clip(0, 255).astype(np.uint8))")
    if ref_shape[1:3] != smp_shape[1:3] and read_precomputed_stats(ref) is None:
        raise MetricInputError(f"the reference images are {ref_shape[1]}x{ref_shape[2]} but the samples are "
                               f"{smp_shape[1]}x{smp_shape[2]} ({ref} vs {sample}); evaluate at one resolution")


def _check_writable(*paths) -> None:
    """Fail before any Inception pass, not after, when a result file cannot be written."""
    for path in paths:
        if path is None:
            continue
        folder = Path(path).parent
        probe = folder if folder.exists() else next((p for p in folder.parents if p.exists()), Path("."))
        if not os.access(probe, os.W_OK):
            raise MetricInputError(f"cannot write the results to {path}: {probe} is not writable")


def _check_counts(ref: Path, sample: Path, compute_pr: bool) -> None:
    """Reject too-small sets before any Inception forward pass."""
    for path in (ref, sample):
        n = _npz_count(path)
        if n < MIN_FID_SAMPLES and read_precomputed_stats(path) is None:
            raise MetricInputError(
                f"{path}: {n} image(s) in arr_0; FID/sFID need at least {MIN_FID_SAMPLES} to estimate a covariance "
                "(ADM uses 50,000 samples)")
        if compute_pr and n < MIN_PR_SAMPLES:
            raise MetricInputError(
                f"{path}: {n} image(s) in arr_0; precision/recall need at least {MIN_PR_SAMPLES} per set (k=3 "
                "nearest neighbours plus the point itself); pass --no-pr to skip them")


def _fmt(value) -> str:
    return "nan" if value is None else str(float(value))


def format_lines(result: dict) -> list[str]:
    """The evaluator's five lines, ``Name: value`` with Python's float formatting (ADM prints with ``print``)."""
    return [f"{label}: {_fmt(result.get(key))}" for label, key in METRIC_LINES]


def parse_metric_lines(text: str) -> dict:
    """Inverse of :func:`format_lines` (what the sampling scripts need to read ``SAMPLE.txt``)."""
    out = {}
    names = dict(METRIC_LINES)
    for line in text.splitlines():
        if ":" in line:
            label, _, value = line.partition(":")
            if label.strip() in names:
                try:
                    out[names[label.strip()]] = float(value.strip())
                except ValueError:
                    pass
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluations.c2i.evaluator", description=__doc__.split("\n\n")[0])
    p.add_argument("ref_batch", help="path to reference batch npz file (arr_0 images; optional mu/sigma/mu_s/sigma_s)")
    p.add_argument("sample_batch", help="path to sample batch npz file (arr_0: uint8 NHWC images)")
    p.add_argument("--device", default="auto", help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per Inception forward (default: ADM's 64 on GPU, 16 on CPU; values do not change)")
    p.add_argument("--inception-path", default=None,
                   help="Inception weights: the StyleGAN metrics TorchScript inception-2015-12-05.pt or a converted "
                        ".safetensors (default: $GIGATOK_INCEPTION_PATH, else the torch hub cache, else download)")
    p.add_argument("--out", default=None, help="metrics JSON path (default: SAMPLE with .npz -> .metrics.json)")
    p.add_argument("--no-txt", action="store_true", help="do not write the SAMPLE.txt side file")
    p.add_argument("--cache-ref", action="store_true",
                   help="cache the reference activations next to REF (or in ~/.cache/gigatok) and reuse them")
    p.add_argument("--split-size", type=int, default=IS_SPLIT_SIZE, help="Inception Score chunk size (ADM: 5000)")
    p.add_argument("--distance-precision", choices=("fp16", "fp32"), default="fp16",
                   help="precision/recall distance arithmetic (ADM: fp16 with fp32 fallback)")
    p.add_argument("--fid-method", choices=("sqrtm", "eigh", "gram"), default="sqrtm",
                   help="trace of the covariance-product root: sqrtm (ADM, scipy), eigh (faster, same up to "
                        "round-off) or gram (from the activations; for small sets without precomputed stats)")
    p.add_argument("--no-pr", action="store_true", help="skip precision/recall")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    return p


def _stem(path: Path) -> Path:
    return path.with_suffix("") if path.suffix == ".npz" else path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sample = Path(args.sample_batch)
    out_json = Path(args.out) if args.out else Path(f"{_stem(sample)}.metrics.json")
    out_txt = None if args.no_txt else Path(f"{_stem(sample)}.txt")
    try:
        result = evaluate_npz(args.ref_batch, sample, device=args.device, batch_size=args.batch_size,
                              inception_path=args.inception_path, cache_ref=args.cache_ref,
                              split_size=args.split_size, distance_precision=args.distance_precision,
                              compute_pr=not args.no_pr, fid_method=args.fid_method,
                              out_json=out_json, out_txt=out_txt,
                              verbose=not args.quiet)
    except (MetricInputError, FileNotFoundError, InceptionWeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in format_lines(result):
        print(line)
    if not args.quiet:
        _log(f"wrote {out_json}" + (f" and {out_txt}" if out_txt else ""))
    return 0


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "evaluator")
