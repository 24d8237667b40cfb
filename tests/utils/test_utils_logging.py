"""utils.logging: a run's log follows its folder, keeps lines logged before it opened, and records its settings."""
from __future__ import annotations

import json

import torch

from utils.logging import RunLog, WindowMeter, read_metrics


def test_run_log_keeps_early_lines_and_switches_folders(tmp_path):
    log = RunLog(is_main=True, name="test.runlog")
    log.info("before any folder")
    assert log.open(tmp_path / "run", 0, {"lr": 1.0}) and not log.open(tmp_path / "run", 3, {"lr": 1.0})
    log.info("in the run folder")
    log.metrics.log({"loss": torch.tensor(2.0)}, 1)
    assert log.open(tmp_path / "run" / "cd", 5, {"lr": 1.0})  # the cool-down: logs switch with the checkpoints
    log.info("in the cool-down")
    log.close()
    text = (tmp_path / "run" / "log.txt").read_text()
    assert text.index("before any folder") < text.index("in the run folder") and "cool-down" not in text
    assert "in the cool-down" in (tmp_path / "run" / "cd" / "log.txt").read_text()
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[1]["loss"] == 2.0
    assert json.loads((tmp_path / "run" / "args.json").read_text()) == {"lr": 1.0}
    # a resumed segment with other settings keeps the first record and writes its own beside it
    again = RunLog(is_main=True, name="test.runlog")
    again.open(tmp_path / "run", 7, {"lr": 2.0})
    again.close()
    assert json.loads((tmp_path / "run" / "args.json").read_text()) == {"lr": 1.0}
    assert json.loads((tmp_path / "run" / "args.resume-0000007.json").read_text()) == {"lr": 2.0}


def test_run_log_prints_pending_lines_when_no_folder_ever_opened(capsys):
    log = RunLog(is_main=True, name="test.runlog")
    log.info("failed before the folder was known")
    log.close()
    assert "failed before the folder was known" in capsys.readouterr().out


def test_window_meter_sums_tensors_without_reading_them_back():
    meter = WindowMeter()
    for value in (1.0, 2.0, 4.0):
        meter.add({"loss": torch.tensor(value), "lr": value, "unset": None})
    assert meter.mean() == {"loss": 7 / 3, "lr": 7 / 3}
    meter.reset()
    assert meter.mean() == {}
