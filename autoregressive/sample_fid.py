"""The gFID job (``sample_c2i --mode fid``): ``--num-fid-samples`` images with uniformly drawn classes, PNGs, the npz
(``arr_0``, ``labels``, ``codes``), and with a reference batch the evaluator's metrics (``<folder>.txt`` written and
read with the evaluator's ``format_lines`` / ``parse_metric_lines``) and a row in the search CSV."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from autoregressive import cfg_search
from autoregressive.sample_inputs import (
    Sampler,
    check_out_folder,
    default_schedule_kwargs,
    fid_labels,
    run_key,
    settings,
)
from utils.distributed import barrier


def fid_folder(args, cfg_scale: float, schedule_kwargs: dict) -> Path:
    """The original's folder name plus the schedule arguments (the original leaves them out, so runs with other
    windows reuse each other's samples) and :func:`run_key` (another checkpoint, sample count, reference, precision
    ... writes beside, never over, an existing result)."""
    size = args.image_size_eval or args.image_size or "tok"
    windows = "".join(f"-{k}-{float(v):.2f}" for k, v in schedule_kwargs.items())
    if args.out:  # an explicit folder; a search puts each scale in its own folder inside it
        return Path(args.out) / f"cfg-{cfg_scale}{windows}" if args.search else Path(args.out)
    return Path(args.sample_dir) / (f"{args.gpt_model}-size-{args.image_size or 'tok'}-size-{size}-topk-{args.top_k}"
                                    f"-topp-{args.top_p}-temperature-{args.temperature}-cfg-{cfg_scale}"
                                    f"-{args.cfg_schedule}{windows}-{run_key(args)}-seed-{args.global_seed}")


def read_metrics(txt: Path) -> dict | None:
    """The five metrics of a finished folder's ``<folder>.txt`` (the evaluator's lines), by their display names (the
    CSV's columns); None when the file is missing or incomplete."""
    from evaluations.c2i.evaluator import METRIC_LINES, parse_metric_lines
    if not txt.is_file():
        return None
    found = parse_metric_lines(txt.read_text())
    return {label: found[key] for label, key in METRIC_LINES} if all(k in found for _, k in METRIC_LINES) else None


def sample_fid(args, sampler: Sampler, dist, cfg_scale: float, schedule_kwargs: dict | None = None) -> dict | None:
    """Sample (or reuse) one folder at ``cfg_scale``; with a reference batch, evaluate it, write ``<folder>.txt`` and
    make sure the results CSV has its row; returns the metrics (None without a reference)."""
    kwargs = default_schedule_kwargs(args) if schedule_kwargs is None else schedule_kwargs
    folder = fid_folder(args, cfg_scale, kwargs)
    check_out_folder(folder, args)
    txt = folder.parent / f"{folder.name}.txt"
    done = read_metrics(txt)
    if done is not None:
        if dist.is_main:
            print(f"[sample] reusing {txt}: every recorded input is identical (run key {run_key(args)})")
            cfg_search.record(csv_path(args), args.cfg_schedule, cfg_search.annotation(kwargs), cfg_scale, done)
        barrier()
        return done
    n = args.num_fid_samples
    mine = list(range(dist.rank, n, dist.world_size))
    if dist.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    barrier()
    start = time.time()
    for k in tqdm(range(0, len(mine), args.per_proc_batch_size), disable=not dist.is_main, desc=f"cfg {cfg_scale}"):
        idx = mine[k: k + args.per_proc_batch_size]
        imgs, codes = sampler.images(fid_labels(args.global_seed, idx, args.num_classes), idx, cfg_scale, kwargs)
        for img, code, i in zip(imgs, codes, idx, strict=True):
            Image.fromarray(img).save(folder / f"{i:06d}.png")
            np.save(folder / f"{i:06d}.codes.npy", code)
    barrier()
    metrics = None
    if dist.is_main:
        arr = np.stack([np.asarray(Image.open(folder / f"{i:06d}.png")) for i in range(n)])
        npz = folder.parent / f"{folder.name}.npz"
        codes = np.stack([np.load(folder / f"{i:06d}.codes.npy") for i in range(n)])
        np.savez(npz, arr_0=arr, labels=fid_labels(args.global_seed, list(range(n)), args.num_classes).numpy(),
                 codes=codes)
        info = settings(args, dist.world_size, cfg_scale, kwargs)
        info["seconds"] = time.time() - start
        (folder / "sample_settings.json").write_text(json.dumps(info, indent=2, default=str))
        print(f"[sample] {n} images in {folder}, npz {npz} ({info['seconds']:.0f} s)")
        if args.gt_npz_path:
            from evaluations.c2i.evaluator import evaluate_npz, format_lines
            # reference activations cached next to the reference npz (keyed by sha256); full results as JSON
            result = evaluate_npz(Path(args.gt_npz_path), npz, device=dist.device, cache_ref=True,
                                  fid_method=args.fid_method,
                                  out_json=folder.parent / f"{folder.name}.metrics.json")
            # the evaluator's own five lines (IS, FID, sFID, Precision, Recall), read back by read_metrics
            txt.write_text("".join(f"{line}\n" for line in format_lines(result)))
            metrics = read_metrics(txt)
            cfg_search.record(csv_path(args), args.cfg_schedule, cfg_search.annotation(kwargs), cfg_scale, metrics)
        if args.clear_cache:
            shutil.rmtree(folder)
            if args.gt_npz_path:
                npz.unlink()
    barrier()
    return metrics if dist.is_main else read_metrics(txt)


def csv_path(args) -> Path:
    """The original's results CSV (``<parent>/search_results/<name>.csv``), one per :func:`run_key`, so a search
    never takes another checkpoint's rows for its history."""
    sample_dir = Path(args.sample_dir)
    return sample_dir.parent / "search_results" / f"{sample_dir.name}-{run_key(args)}.csv"
