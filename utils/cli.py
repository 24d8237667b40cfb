"""Command-line helpers shared by the drivers and benchmarks."""
from __future__ import annotations

import argparse


def did_you_mean(name: str, known, cutoff: float = 0.6) -> str:
    """``"; did you mean a, b?"`` with the known names closest to a misspelt ``name`` (empty when none is close)."""
    import difflib
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=cutoff)
    return f"; did you mean {', '.join(close)}?" if close else ""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the module docstring's layout and appends each flag's default to its help."""


# ----- one-line errors and documented exit codes ---------------------------------------------------------------------
# 2: bad input (config, checkpoint, data, metric input); 3: training diverged; 4: I/O (disk full, permission);
# 75 (EX_TEMPFAIL): preempted (SIGTERM / SIGUSR1): a checkpoint of the current step was written, run it again (requeue).
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_IO, EXIT_REQUEUE = 2, 3, 4, 75
_IO_ERRNOS = {28, 13, 30, 122}  # ENOSPC, EACCES, EROFS, EDQUOT


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def classify(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) for the errors a user can act on; None for anything else (a bug: traceback)."""
    import sys

    from utils.training import LauncherGone, Preempted, TrainingDiverged  # lazily: the kit imports this module

    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _IO_ERRNOS or "No space left on device" in str(e):
            what = "no space left on device" if (getattr(e, "errno", None) == 28 or "No space left" in str(e)) \
                else (e.strerror or "permission denied").lower()
            where = getattr(e, "filename", None) or (getattr(exc, "filename", None))
            return EXIT_IO, f"error: {what}" + (f": {where}" if where else "") + f" ({type(exc).__name__})"
    if isinstance(exc, TrainingDiverged):
        return EXIT_DIVERGED, f"training stopped: {exc}"
    if isinstance(exc, Preempted):
        return EXIT_REQUEUE, f"preempted: {exc}"
    if isinstance(exc, LauncherGone):
        return 1, f"stopped: {exc}"
    from utils.checkpoint import CheckpointError
    from utils.config import ConfigError
    if isinstance(exc, (ConfigError, CheckpointError, ValueError, FileNotFoundError, NotImplementedError)):
        return EXIT_BAD_INPUT, f"error: {exc}"
    del sys
    return None


def run_cli(main, prog: str, argv=None) -> None:
    """Run a driver's ``main`` as a command. A project error becomes one ``[prog] error: ...`` line on stderr and a
    documented exit code (see :data:`EXIT_BAD_INPUT` ...); ``--debug`` anywhere on the command line or
    ``GIGATOK_DEBUG=1`` shows the traceback instead. Under torchrun the first failing rank also records its line in
    ``$GIGATOK_ERROR_FILE``, so the launcher script can print it last and exit with its code."""
    import os
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("GIGATOK_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        result = main(argv)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - classified below, re-raised when not a user error
        found = None if debug else classify(exc)
        if found is None:
            raise
        code, message = found
        line = f"[{prog}] {message}"
        print(line, file=sys.stderr, flush=True)
        record = os.environ.get("GIGATOK_ERROR_FILE")
        if record:
            try:
                fd = os.open(record, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                with os.fdopen(fd, "w") as fh:
                    fh.write(f"{code}\t{line}\n")
            except OSError:
                pass  # another rank was first
        sys.exit(code)
    if isinstance(result, int) and not isinstance(result, bool):
        sys.exit(result)


# ----- the `gigatok` command -----------------------------------------------------------------------------------------
JOBS = {
    "train-tokenizer": ("tokenizer.train", "train a VQ tokenizer (DDP / FSDP2 under torchrun)"),
    "reconstruct": ("tokenizer.reconstruct", "reconstruct an image folder: PSNR, SSIM, LPIPS, rFID"),
    "lin-probe-tokenizer": ("tokenizer.lin_probe", "linear probe on tokenizer features"),
    "extract-codes": ("autoregressive.extract_codes", "tokenise an image folder for GPT training"),
    "train-gpt": ("autoregressive.train_c2i", "train a class-conditional GPT"),
    "sample": ("autoregressive.sample_c2i", "class grids or gFID samples (CFG search)"),
    "val-loss": ("autoregressive.val_loss", "validation cross-entropy of a GPT"),
    "lin-probe-gpt": ("autoregressive.lin_probe", "linear probe on GPT features"),
    "reproduce": ("autoregressive.reproduce", "one command per published number"),
    "evaluate": ("evaluations.c2i.evaluator", "ADM metrics (FID, sFID, IS, precision, recall) of an npz"),
    "make-val-npz": ("evaluations.make_val_npz", "the rFID reference batch from ImageNet val"),
    "convert": ("autoregressive.convert_checkpoint", "a checkpoint -> model.safetensors + config + model card folder"),
}


def gigatok_main(argv=None) -> None:
    """``gigatok JOB [flags]``: the same as ``python -m MODULE [flags]`` (``gigatok JOB --help`` for its flags)."""
    import runpy
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        width = max(map(len, JOBS))
        print("usage: gigatok JOB [flags]   (gigatok JOB --help lists the job's flags)\n\njobs:")
        for name, (module, what) in JOBS.items():
            print(f"  {name:<{width}}  {what}  (python -m {module})")
        raise SystemExit(0 if argv else 2)
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        raise SystemExit(f"gigatok: unknown job {job!r}{did_you_mean(job, JOBS)} (gigatok --help lists them)")
    module = JOBS[job][0]
    sys.argv = [f"gigatok {job}", *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
