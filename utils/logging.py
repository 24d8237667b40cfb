"""Training logs shared by the tokenizer and AR trainers: rank-0 text log, JSONL metrics, optional
TensorBoard / wandb (used only when installed and asked for; never required), and a windowed mean meter.

* :func:`create_logger` — rank 0 writes ``[time] message`` lines to stdout and ``<dir>/log.txt`` (as the
  original); other ranks get a logger that drops everything.
* :class:`MetricWriter` — rank 0 appends one JSON object per log step to ``<dir>/metrics.jsonl`` and mirrors the
  scalars to TensorBoard / wandb if enabled.
* :class:`WindowMeter` — sums of named scalars over a logging window, averaged over steps and ranks.
* :class:`RunLog` — the two above for one training run, in the folder the run's current phase logs to (lines
  logged before a folder is known are kept and written when it opens).
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist


def create_logger(log_dir: str | os.PathLike | None, is_main: bool = True, name: str = "gigatok.train",
                  filename: str = "log.txt") -> logging.Logger:
    """Rank 0: INFO to stdout and ``log_dir/filename``; other ranks: a silent logger."""
    logger = logging.getLogger(f"{name}.{os.getpid()}")
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if not is_main:
        logger.addHandler(logging.NullHandler())
        logger.setLevel(logging.CRITICAL + 1)
        return logger
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(log_dir) / filename))
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger


def close_logger(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        handler.flush()
        handler.close()
        logger.removeHandler(handler)


class MetricWriter:
    """Rank-0 metrics sink: ``metrics.jsonl`` always; TensorBoard and wandb only when requested and importable."""

    def __init__(self, log_dir: str | os.PathLike, is_main: bool = True, tensorboard: bool = False,
                 wandb_project: str | None = None, run_name: str | None = None, config: Mapping | None = None,
                 logger: logging.Logger | None = None, filename: str = "metrics.jsonl"):
        self.is_main = is_main
        self.path = Path(log_dir) / filename
        self.tb = None
        self.wandb = None
        if not is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        note = (logger.warning if logger else warnings.warn)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(Path(log_dir) / "tensorboard"))
            except Exception as exc:  # noqa: BLE001 - optional dependency
                note(f"tensorboard logging disabled ({type(exc).__name__}: {exc})")
        if wandb_project:
            try:
                import wandb
                id_file = Path(log_dir) / "wandb_id.txt"
                run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
                id_file.write_text(run_id)
                self.wandb = wandb.init(project=wandb_project, name=run_name, id=run_id, resume="allow",
                                        config=dict(config or {}))
            except Exception as exc:  # noqa: BLE001 - optional dependency / no login
                note(f"wandb logging disabled ({type(exc).__name__}: {exc})")

    def log(self, record: Mapping[str, Any], step: int) -> None:
        if not self.is_main:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in record.items() if k != "step"}}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


class RunLog:
    """A training run's text log and metrics, in one folder at a time: :meth:`open` (re)opens them in ``folder``
    (the trainers switch to the WSD cool-down folder, as the original) and writes ``args.json`` there (the first
    segment's record stays; a resumed segment with other settings writes ``args.resume-<step>.json`` beside it)."""

    def __init__(self, is_main: bool, name: str):
        self.is_main, self.name = is_main, name
        self.folder: Path | None = None
        self.logger: logging.Logger | None = None
        self.metrics: MetricWriter | None = None
        self._pending: list[str] = []

    def info(self, message: str) -> None:
        if self.logger is not None:
            self.logger.info(message)
        elif self.is_main:
            self._pending.append(message)

    def open(self, folder: Path, step: int, settings: Mapping[str, Any], tensorboard: bool = False,
             wandb_project: str | None = None, run_name: str | None = None) -> bool:
        """Log to ``folder`` from ``step`` on; returns whether it was newly opened."""
        if folder == self.folder:
            return False
        self._close_files()
        self.logger = create_logger(folder if self.is_main else None, is_main=self.is_main, name=self.name)
        self.metrics = MetricWriter(folder, is_main=self.is_main, tensorboard=tensorboard, wandb_project=wandb_project,
                                    run_name=run_name, config=settings, logger=self.logger)
        self.folder = folder
        if self.is_main:
            record, first = json.dumps(dict(settings), indent=2), folder / "args.json"
            if not first.exists():
                first.write_text(record)
            elif json.loads(first.read_text()) != json.loads(record):
                (folder / f"args.resume-{step:07d}.json").write_text(record)
        for message in self._pending:
            self.logger.info(message)
        self._pending = []
        return True

    def close(self) -> None:
        """Close the files; lines still pending (a failure before any folder opened) go to stdout."""
        for message in self._pending:
            print(message, flush=True)
        self._pending = []
        self._close_files()

    def _close_files(self) -> None:
        if self.logger is not None:
            close_logger(self.logger)
        if self.metrics is not None:
            self.metrics.close()
        self.logger = self.metrics = None


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


def record_resume(log_dir: str | os.PathLike, step: int, checkpoint: str | os.PathLike | None = None) -> None:
    """Append ``{"step", "checkpoint", "time"}`` to ``<log_dir>/resumes.jsonl`` (rank 0, on every resume), so the
    curves can mark where a run restarted even when the restart re-logged no step (``utils.plot_run``)."""
    import time
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(log_dir) / "resumes.jsonl", "a") as fh:
        fh.write(json.dumps({"step": int(step), "checkpoint": None if checkpoint is None else str(checkpoint),
                             "time": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")


def read_metrics(path: str | os.PathLike) -> dict[int, dict]:
    """``metrics.jsonl`` as {step: record}; a step logged twice (e.g. after a resume) keeps the last record."""
    out: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[int(rec["step"])] = rec
    return out


class WindowMeter:
    """Accumulates named scalars over a logging window; :meth:`mean` averages over steps and (optionally) ranks.

    Every rank must add the same keys (the trainer's loss terms are the same on all ranks) because the
    cross-rank mean is one all-reduce over the keys in sorted order. Tensor values are summed where they live (in
    float64), so adding them never waits for the device.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            if value is None:
                continue
            value = value.detach().double() if isinstance(value, torch.Tensor) else float(value)
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def mean(self, device: torch.device | str = "cpu", all_ranks: bool = True) -> dict[str, float]:
        keys = sorted(self.sums)
        local = torch.stack([torch.as_tensor(self.sums[k] / self.counts[k], dtype=torch.float64).to(device)
                             for k in keys]) if keys else torch.zeros(0, dtype=torch.float64, device=device)
        if all_ranks and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and keys:
            dist.all_reduce(local, op=dist.ReduceOp.SUM)
            local /= dist.get_world_size()
        return dict(zip(keys, local.tolist(), strict=True))
