"""utils.plot_run: curves.png from metrics.jsonl (every scalar, resume marks), the CFG search plot, the CLI, and the
never-fatal hook the trainers call."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from autoregressive import cfg_search
from utils import plot_run as pr
from utils.logging import MetricWriter, record_resume

pytest.importorskip("matplotlib", reason="the plot extra (pip install -e '.[plot]'; env_install.sh --test has it)")


def _write_run(folder, steps, resumed_at=None):
    writer = MetricWriter(folder)
    for step in steps:
        writer.log({"loss": 1.0 / step, "rec_loss": 0.5 / step, "codebook_usage": min(1.0, step / 100),
                    "lr": 1e-4, "images_per_sec": 50.0 + step, "epoch": 0, "skipped_images": ["a.png"]}, step)
    if resumed_at is not None:
        record_resume(folder, resumed_at, folder / "checkpoints" / f"{resumed_at:07d}.pt")
    return folder


def test_series_keeps_every_numeric_key_and_the_last_record_of_a_step(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(json.dumps(r) for r in [
            {"step": 10, "loss": 3.0, "lr": 1e-3, "epoch": 0, "note": "x"},
            {"step": 20, "loss": 2.0, "lr": 1e-3},
            {"step": 20, "loss": 1.5, "lr": 1e-3, "nan_term": "nan"},  # step 20 again (a resume): the last wins
        ]) + "\n{broken")
    records = pr.read_records(tmp_path / "metrics.jsonl")
    assert len(records) == 3  # the half-written last line is skipped
    curves = pr.series(records)
    assert set(curves) == {"loss", "lr", "nan_term"}  # step, epoch and strings that are not numbers are not curves
    assert curves["loss"] == ([10, 20], [3.0, 1.5])
    assert pr.resume_steps(tmp_path, records) == [20]  # the steps went back: a restart


def test_panels_put_losses_first_then_usage_lr_throughput():
    order = pr.panel_order(["max_memory_GiB", "images_per_sec", "lr", "codebook_usage", "rec_loss", "loss"])
    assert order == ["loss", "rec_loss", "codebook_usage", "lr", "images_per_sec", "max_memory_GiB"]


def test_plot_run_writes_curves_png_with_resume_marks(tmp_path):
    run = _write_run(tmp_path / "run", [10, 20, 30, 40], resumed_at=20)
    assert pr.resume_steps(run) == [20]
    out = pr.plot_run(run)
    assert out == run / "curves.png"
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[0] > 100 and img.shape[1] > 300
    # the resume line is drawn in matplotlib's tab:red (214, 39, 40)
    red = (np.abs(img.astype(int) - [214, 39, 40]).sum(-1) < 40).sum()
    assert red > 50
    no_resume = pr.plot_run(_write_run(tmp_path / "plain", [10, 20, 30, 40]))
    img2 = np.asarray(Image.open(no_resume).convert("RGB"))
    assert (np.abs(img2.astype(int) - [214, 39, 40]).sum(-1) < 40).sum() == 0


def test_terms_that_stayed_zero_are_named_not_drawn(tmp_path):
    writer = MetricWriter(tmp_path)
    for step in (1, 2, 3):
        writer.log({"loss": 1.0 / step, "perceptual_loss": 0.0, "lr": 0.0}, step)
    one_panel = Image.open(pr.plot_run(tmp_path)).size
    writer.log({"loss": 0.2, "perceptual_loss": 0.1, "lr": 0.0}, 4)  # now it moved: drawn
    assert Image.open(pr.plot_run(tmp_path)).size[0] > one_panel[0]


def test_plot_run_cli_and_its_errors(tmp_path, capsys):
    run = _write_run(tmp_path / "run", [5, 10])
    out = pr.main([str(run), "--out", str(tmp_path / "c.png")])
    assert out == tmp_path / "c.png" and out.is_file() and "wrote" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        pr.main([str(tmp_path / "nothing")])
    with pytest.raises(SystemExit):
        pr.main([])  # neither a run nor a CSV


def test_quiet_hook_never_raises(tmp_path, monkeypatch):
    lines = []
    assert pr.plot_run_quietly(tmp_path / "empty", lines.append) is None and lines == []  # nothing logged yet
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text(json.dumps({"step": 1, "note": "no numbers"}) + "\n")
    assert pr.plot_run_quietly(tmp_path / "bad", lines.append) is None
    assert len(lines) == 1 and "not drawn" in lines[0]
    run = _write_run(tmp_path / "run", [1, 2])
    assert pr.plot_run_quietly(run, lines.append) == run / "curves.png"


def test_cfg_search_plot_has_a_line_per_schedule(tmp_path):
    path = tmp_path / "search_results" / "run.csv"
    for schedule, note, scales in (("step", "window_start=0.18", (1.5, 1.75, 2.0)), ("constant", "", (1.5, 2.0))):
        for s in scales:
            cfg_search.record(path, schedule, note, s, {"FID": (s - 1.75) ** 2 + 3, "Inception Score": 100 * s,
                                                        "Precision": 0.8, "Recall": 0.5, "sFID": 5.0})
    for ws in np.arange(0.1, 0.5, 0.05):  # many windows of one schedule: drawn as the best FID per scale
        cfg_search.record(path, "rectangular", cfg_search.annotation({"window_start": ws, "window_end": 1.0}), 2.0,
                          {"FID": 4 + ws, "Inception Score": 90, "Precision": 0.8, "Recall": 0.5, "sFID": 5.0})
    out = pr.main(["--cfg-search", str(path)])
    assert out == tmp_path / "search_results" / "run.cfg_search.png" and out.is_file()
    assert Image.open(out).size[0] > 400
    with pytest.raises(FileNotFoundError):
        pr.plot_cfg_search(tmp_path / "missing.csv")
