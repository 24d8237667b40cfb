"""Pictures of a run: training curves from ``metrics.jsonl`` and the CFG search's FID / IS against the scale.

    python -m utils.plot_run RUN_DIR [--out RUN_DIR/curves.png]
    python -m utils.plot_run --cfg-search search_results/NAME.csv [--out NAME.cfg_search.png]

``curves.png`` has one panel per logged scalar (every loss term, the learning rates, codebook usage, throughput,
gradient norm, memory; a term that stayed exactly 0, i.e. switched off, is named in the title instead), with dashed
vertical lines where the run was resumed (from ``resumes.jsonl``, which the trainers append to on every resume, and
wherever the steps in ``metrics.jsonl`` go back). The trainers redraw it at each checkpoint on rank 0 through
:func:`plot_run_quietly`, which never raises: a plot is a convenience, a training run must not die for one.
Needs matplotlib (``pip install -e ".[plot]"``); without it the trainers say so once.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
from pathlib import Path
from typing import Callable

METRICS_FILE = "metrics.jsonl"
RESUMES_FILE = "resumes.jsonl"
CURVES_FILE = "curves.png"
# not curves: bookkeeping numbers
SKIPPED_KEYS = {"step", "epoch"}
PLOT_EXTRA_HINT = 'pip install -e ".[plot]" (or bash env_install.sh --plot)'


def read_records(path: str | os.PathLike) -> list[dict]:
    """Every record of a ``metrics.jsonl`` in file order (a resumed run logs some steps twice); unreadable lines
    (a run killed mid-write) are skipped."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "step" in rec:
            out.append(rec)
    return out


def resume_steps(run_dir: str | os.PathLike, records: list[dict] | None = None) -> list[int]:
    """Steps a run was resumed from: those recorded in ``resumes.jsonl`` plus, for runs older than that file, every
    place where the logged steps go back (a restart that logged some steps again)."""
    run_dir = Path(run_dir)
    found: set[int] = set()
    marks = run_dir / RESUMES_FILE
    if marks.is_file():
        for rec in read_records(marks):
            found.add(int(rec["step"]))
    if records is None:
        path = run_dir / METRICS_FILE
        records = read_records(path) if path.is_file() else []
    for before, after in zip(records, records[1:], strict=False):
        if int(after["step"]) <= int(before["step"]):
            found.add(int(after["step"]))
    return sorted(found)


def series(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """``{key: (steps, values)}`` of every numeric key, the last record of a step winning (as ``read_metrics``)."""
    by_step: dict[int, dict] = {}
    for rec in records:
        by_step[int(rec["step"])] = rec
    out: dict[str, tuple[list[int], list[float]]] = {}
    for step in sorted(by_step):
        for key, value in by_step[step].items():
            if key in SKIPPED_KEYS or isinstance(value, bool):
                continue
            if isinstance(value, str):  # the writer stores NaN / inf as strings
                try:
                    value = float(value)
                except ValueError:
                    continue
            if isinstance(value, (int, float)):
                steps, values = out.setdefault(key, ([], []))
                steps.append(step)
                values.append(float(value))
    return out


def panel_order(keys) -> list[str]:
    """Losses first (the total first), then codebook usage, learning rates, throughput, everything else."""
    def rank(key: str) -> tuple[int, str]:
        k = key.lower()
        if k in ("loss", "train_loss"):
            return 0, k
        if "loss" in k:
            return 1, k
        if "usage" in k or "codebook" in k:
            return 2, k
        if k.startswith("lr"):
            return 3, k
        if "per_sec" in k:
            return 4, k
        return 5, k
    return sorted(keys, key=rank)


def _figure(rows: int, cols: int, width: float = 4.0, height: float = 2.6):
    """A matplotlib Figure drawn by the Agg canvas, without pyplot (no global state, no display, thread-safe)."""
    from matplotlib.figure import Figure
    return Figure(figsize=(cols * width, rows * height), dpi=80, layout="constrained")


def _save(fig, out: Path) -> Path:
    """Write atomically, so a reader never sees half a PNG; as a 256-colour palette PNG (a third of the size, no
    visible change for line plots)."""
    import io

    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    tmp = out.with_name(f".{out.name}.tmp")
    Image.open(buf).convert("RGB").quantize(256).save(tmp, format="png", optimize=True)
    os.replace(tmp, out)
    return out


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, max_cols: int = 4) -> Path:
    """Draw ``RUN_DIR/metrics.jsonl`` into ``curves.png`` (or ``out``); returns the PNG's path."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: RUN_DIR must be a training run's folder (the one "
                                f"holding {METRICS_FILE})")
    records = read_records(path)
    curves = series(records)
    if not curves:
        raise ValueError(f"{str(path)!r} holds no numeric metrics yet")
    resumes = resume_steps(run_dir, records)
    # terms that stayed exactly 0 (switched off, e.g. the quickstart's perceptual and adversarial losses) are named in
    # the title instead of drawn as flat lines
    off = sorted(k for k, (_, values) in curves.items() if all(v == 0.0 for v in values))
    keys = panel_order(k for k in curves if k not in off) or panel_order(curves)
    cols = min(max_cols, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = _figure(rows, cols)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        steps, values = curves[key]
        ax.plot(steps, values, marker="." if len(steps) < 30 else None, linewidth=1.2)
        for i, step in enumerate(resumes):
            ax.axvline(step, color="tab:red", linestyle="--", linewidth=0.9, label="resumed" if i == 0 else None)
        finite = [v for v in values if math.isfinite(v)]
        if not key.startswith("lr") and finite and min(finite) > 0 and max(finite) / min(finite) > 100:
            ax.set_yscale("log")  # losses spanning decades
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if resumes and key == keys[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    last = max(s for steps, _ in curves.values() for s in steps)
    title = f"{run_dir.name}: {len(records)} log records to step {last}"
    title += f", resumed at {', '.join(map(str, resumes))}" if resumes else ""
    if off and len(keys) < len(curves):
        title += "\nalways 0 (not drawn): " + ", ".join(off)
    fig.suptitle(title, fontsize=10)
    return _save(fig, Path(out) if out else run_dir / CURVES_FILE)


_warned: set[str] = set()


def plot_run_quietly(run_dir: str | os.PathLike, log: Callable[[str], None] = print) -> Path | None:
    """:func:`plot_run` for the trainers: any failure (matplotlib missing, an odd record, a full disk) becomes one
    logged line (missing matplotlib is said once per process), never an exception."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if "matplotlib" not in _warned:
            _warned.add("matplotlib")
            log(f"curves.png not drawn: matplotlib is not installed ({PLOT_EXTRA_HINT})")
        return None
    if not (Path(run_dir) / METRICS_FILE).is_file():
        return None  # nothing logged yet (a checkpoint before the first log step)
    try:
        return plot_run(run_dir)
    except Exception as exc:  # noqa: BLE001 - a plot must never stop training
        log(f"WARNING: curves.png not drawn ({type(exc).__name__}: {exc})")
        return None


def cfg_search_plot_path(csv_path: str | os.PathLike) -> Path:
    """Where the CFG search's plot goes: beside its CSV, ``<csv stem>.cfg_search.png``."""
    p = Path(csv_path)
    return p.with_name(f"{p.stem}.cfg_search.png")


def plot_cfg_search(csv_path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """FID and Inception Score against the CFG scale, one line per schedule (per window for a schedule searched over
    a few windows; the best FID per scale when over many, as the rectangular grid)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"CFG search results {str(csv_path)!r} do not exist")
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    groups: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    for row in rows:
        try:
            point = (float(row["cfg_scale"]), float(row["FID"]), float(row.get("Inception Score") or "nan"))
        except (KeyError, TypeError, ValueError):
            continue
        groups.setdefault(row.get("cfg_schedule") or "?", {}).setdefault(row.get("annotation") or "", []).append(point)
    if not groups:
        raise ValueError(f"{str(csv_path)!r} holds no evaluated CFG scale yet")
    fig = _figure(1, 2, width=5.0, height=3.6)
    ax_fid, ax_is = fig.subplots(1, 2)
    for schedule, by_note in sorted(groups.items()):
        lines: list[tuple[str, list[tuple[float, float, float]]]]
        if len(by_note) <= 6:
            lines = [(f"{schedule} {note}".strip(), sorted(pts)) for note, pts in sorted(by_note.items())]
        else:
            best: dict[float, tuple[float, float, float]] = {}
            for pts in by_note.values():
                for p in pts:
                    if p[0] not in best or p[1] < best[p[0]][1]:
                        best[p[0]] = p
            lines = [(f"{schedule} (best of {len(by_note)} windows)", sorted(best.values()))]
        for label, pts in lines:
            scales = [p[0] for p in pts]
            ax_fid.plot(scales, [p[1] for p in pts], marker="o", label=label)
            ax_is.plot(scales, [p[2] for p in pts], marker="o", label=label)
            best_pt = min(pts, key=lambda p: p[1])
            ax_fid.annotate(f"{best_pt[1]:.2f}", (best_pt[0], best_pt[1]), fontsize=7, textcoords="offset points",
                            xytext=(0, 6), ha="center")
    for ax, name in ((ax_fid, "FID (lower is better)"), (ax_is, "Inception Score")):
        ax.set_xlabel("CFG scale")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    ax_fid.legend(fontsize=7)
    fig.suptitle(csv_path.stem, fontsize=9)
    return _save(fig, Path(out) if out else cfg_search_plot_path(csv_path))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m utils.plot_run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", default=None,
                   help="a training run's folder (holding metrics.jsonl): writes curves.png there")
    p.add_argument("--cfg-search", default=None, metavar="CSV",
                   help="instead: a CFG search's results CSV (search_results/*.csv): writes <csv stem>.cfg_search.png")
    p.add_argument("--out", default=None, help="PNG path instead of the default beside the input")
    return p


def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)
    if (args.run_dir is None) == (args.cfg_search is None):
        build_parser().error("give either RUN_DIR or --cfg-search CSV")
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise NotImplementedError(f"plotting needs matplotlib: {PLOT_EXTRA_HINT}") from exc
    out = plot_cfg_search(args.cfg_search, args.out) if args.cfg_search else plot_run(args.run_dir, args.out)
    print(f"[plot_run] wrote {out}")
    return out


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "plot_run")
