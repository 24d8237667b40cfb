"""The CFG-scale search (``sample_c2i --mode fid --search``): the original's walk (autoregressive/cfg_search.py)
over the gFID job, once per schedule window, with a picture of FID and IS against the scale."""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from autoregressive import cfg_search
from autoregressive.sample_fid import csv_path, sample_fid
from autoregressive.sample_inputs import Sampler, default_schedule_kwargs, tokenizer_label


def search(args, sampler: Sampler, dist) -> dict:
    """The original's search for this schedule (see autoregressive/cfg_search.py); returns the best setting."""
    if not args.gt_npz_path:
        raise ValueError("--search needs --gt-npz-path (the reference batch to compute FID against)")
    start = args.cfg_scale_start
    if start is None:
        start = cfg_search.empirical_cfg_start(args.gpt_model, args.cfg_schedule, tokenizer_label(args),
                                               args.gpt_ckpt)
    path, first_start = csv_path(args), start
    if args.cfg_schedule == "rectangular":
        windows = [{"window_start": ws, "window_end": we} for ws, we in cfg_search.rectangular_grid()]
    else:
        windows = [default_schedule_kwargs(args)]
    walks = []
    for kwargs in tqdm(windows, disable=not dist.is_main or len(windows) == 1, desc="window grid"):
        def evaluate(scale: float, kw: dict = kwargs) -> dict | None:
            metrics = sample_fid(args, sampler, dist, scale, kw)
            if dist.is_main:  # redrawn after every scale, so an interrupted search has its picture too
                plot_search(path)
            return metrics

        best, fid = cfg_search.walk(path, args.cfg_schedule, cfg_search.annotation(kwargs), start, evaluate,
                                    increase_first=args.cfg_schedule != "rectangular")
        walks.append({"cfg_schedule_kwargs": kwargs, "best_cfg_scale": best, "fid": fid})
        start = best  # the next window starts from this one's best (rectangular)
    overall = min(walks, key=lambda w: w["fid"])
    picture = plot_search(path) if dist.is_main else None
    if dist.is_main:
        print(f"[search] {args.cfg_schedule} {overall['cfg_schedule_kwargs']}: best cfg scale "
              f"{overall['best_cfg_scale']} with FID {overall['fid']:.4f} (results in {path})")
    return {**overall, "start": first_start, "walks": walks, "csv": str(path),
            "plot": None if picture is None else str(picture)}


def plot_search(path: Path) -> Path | None:
    """FID and IS against the scale (``<csv stem>.cfg_search.png`` beside the CSV); a plotting failure or a missing
    matplotlib is one printed line, never the end of a search."""
    from utils.plot_run import PLOT_EXTRA_HINT, plot_cfg_search
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"[search] no cfg_search.png: matplotlib is not installed ({PLOT_EXTRA_HINT})")
        return None
    try:
        return plot_cfg_search(path)
    except Exception as exc:  # noqa: BLE001 - the search's results are in the CSV either way
        print(f"[search] WARNING: cfg_search.png not drawn ({type(exc).__name__}: {exc})")
        return None
