"""The original's CFG search (``sample_c2i_cfg_search.py``): where a walk starts, how it steps, when it stops.

A walk over the guidance scale for one schedule and one set of schedule arguments (its *annotation*, e.g.
``window_start=0.18``) reads every row of the results CSV with that schedule and annotation, earlier runs included:
it evaluates the start scale if nothing is recorded, else the untried neighbour (best +- 0.25, never below 1.0) of the
best scale so far, and stops when both neighbours are recorded. So a search that is interrupted, or rerun with more
history, continues where the CSV stands, exactly as the original's ``get_next_search_state_cfg``.

``step`` and ``constant`` searches walk once (trying the larger neighbour first); ``rectangular`` walks for every
(window_start, window_end) of the original's grid (0.10..0.80 x 0.50..1.00 in steps of 0.05, start < end), each walk
starting from the previous walk's best scale and trying the smaller neighbour first.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from utils.config import ConfigError

CSV_COLUMNS = ["annotation", "cfg_scale", "cfg_schedule", "FID", "Inception Score", "Precision", "Recall", "sFID"]
STEP = 0.25
MIN_SCALE = 1.0
SEARCHABLE = ("step", "constant", "rectangular")


def empirical_cfg_start(gpt_model: str, cfg_schedule: str, tok_config: str = "", gpt_ckpt: str = "") -> float:
    """The original's per-model starting scale (``empirical_cfg_start``), used instead of ``--cfg-scale``.

    ``v4b`` / ``0250000.pt`` in the checkpoint name are the original's special cases for its own adaLN runs.
    """
    own_run = "v4b" in str(gpt_ckpt)
    late = "0250000.pt" in str(gpt_ckpt)
    if cfg_schedule == "step":
        if gpt_model == "GPT-B":
            return (3.0 if late else 2.75) if own_run else 2.5
        if gpt_model == "GPT-L":
            return (2.5 if late else 1.75) if own_run else 1.75
        return 1.25
    if cfg_schedule == "constant":
        if gpt_model == "GPT-B":
            return 1.75 if "XXL" in str(tok_config) else 2.0
        return 1.75
    if cfg_schedule == "rectangular":
        return {"GPT-B": 3.0, "GPT-L": 2.5}.get(gpt_model, 1.75)
    raise ConfigError(f"--search supports the cfg schedules {list(SEARCHABLE)} (as the original), got "
                      f"{cfg_schedule!r}")


def annotation(schedule_kwargs: dict) -> str:
    """The CSV's annotation of a set of schedule arguments, as the original writes it (``k=v`` to 2 decimals)."""
    return ";".join(f"{k}={float(v):.2f}" for k, v in schedule_kwargs.items())


def rectangular_grid() -> list[tuple[float, float]]:
    """(window_start, window_end) pairs of the original's rectangular search, in its order and with its float
    arithmetic (``np.arange``; that also yields one degenerate pair, 0.80 / 0.80, which is kept)."""
    starts = np.arange(0.1, 0.8 + 0.01, 0.05)
    ends = np.arange(0.5, 1.01, 0.05)
    return [(float(s), float(e)) for s in starts for e in ends if s < e]


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def recorded(path: Path, cfg_schedule: str, note: str) -> dict[float, float]:
    """FID by scale of every CSV row with this schedule and annotation (the first row of a scale wins)."""
    out: dict[float, float] = {}
    for row in read_rows(path):
        if row.get("cfg_schedule") != cfg_schedule or (row.get("annotation") or "") != note:
            continue
        try:
            scale, fid = round(float(row["cfg_scale"]), 4), float(row["FID"])
        except (KeyError, TypeError, ValueError):
            continue
        if not math.isnan(fid):
            out.setdefault(scale, fid)
    return out


def append_row(path: Path, cfg_schedule: str, note: str, cfg_scale: float, metrics: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(CSV_COLUMNS)
        writer.writerow([note, cfg_scale, cfg_schedule, metrics["FID"], metrics["Inception Score"],
                         metrics["Precision"], metrics["Recall"], metrics["sFID"]])


def next_scale(history: dict[float, float], start: float, increase_first: bool) -> float | None:
    """The next scale to evaluate, or None when the best recorded scale's neighbours are both recorded."""
    if not history:
        return round(start, 4)
    best = min(history, key=history.get)
    order = (STEP, -STEP) if increase_first else (-STEP, STEP)
    for delta in order:
        candidate = round(best + delta, 4)
        if candidate >= MIN_SCALE and candidate not in history:
            return candidate
    return None


def walk(path: Path, cfg_schedule: str, note: str, start: float, evaluate: Callable[[float], dict],
         increase_first: bool = True) -> tuple[float, float]:
    """Evaluate scales until a local FID minimum; ``evaluate(scale)`` returns the metrics and must leave a CSV row
    (see :func:`record`). Returns (best scale, its FID)."""
    while True:
        history = recorded(path, cfg_schedule, note)
        scale = next_scale(history, start, increase_first)
        if scale is None:
            best = min(history, key=history.get)
            return best, history[best]
        evaluate(scale)
        if scale not in recorded(path, cfg_schedule, note):
            raise RuntimeError(f"the evaluation of cfg scale {scale} left no row in {path}")


def record(path: Path, cfg_schedule: str, note: str, cfg_scale: float, metrics: dict) -> None:
    """Add a result row unless one with this schedule, annotation and scale exists."""
    if round(float(cfg_scale), 4) not in recorded(path, cfg_schedule, note):
        append_row(path, cfg_schedule, note, cfg_scale, metrics)


def best_recorded(path: Path, cfg_schedule: str, notes: Iterable[str] | None = None) -> dict | None:
    """The row with the lowest FID for a schedule (over the given annotations, or all), as the original announces."""
    rows = [r for r in read_rows(path) if r.get("cfg_schedule") == cfg_schedule
            and (notes is None or (r.get("annotation") or "") in set(notes))]
    rows = [r for r in rows if r.get("FID") not in (None, "") and not math.isnan(float(r["FID"]))]
    return min(rows, key=lambda r: float(r["FID"])) if rows else None
