"""One run per experiment folder, and workers that do not outlive their launcher.

:class:`ExperimentLock` is a lock file (``<experiment>/.lock``: host, pid, start time) that rank 0 creates atomically
before anything is written into the folder. A second launch into the same folder stops at once with the owner's
details. A lock left by a process that no longer runs on this host (a SIGKILLed run) is taken over, with a message; a
lock from another host is never taken over automatically (remove the file when that run is known to be dead).

:func:`die_with_parent` makes a torchrun worker receive SIGTERM when its launcher dies (Linux ``PR_SET_PDEATHSIG``),
and :func:`parent_alive` lets a training loop notice the same elsewhere, so killing torchrun never leaves trainers
behind writing into the folder.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from utils.config import ConfigError

LOCK_NAME = ".lock"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # a zombie (killed, not yet reaped) no longer runs
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class ExperimentLock:
    """``with ExperimentLock(folder):`` or ``acquire()`` / ``release()``; only the process that took it removes it."""

    def __init__(self, folder: str | os.PathLike, log=print):
        self.path = Path(folder) / LOCK_NAME
        self.log = log
        self.held = False

    def owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "argv": sys.argv}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner() or {}
                same_host = owner.get("host") == me["host"]
                if same_host and isinstance(owner.get("pid"), int) and not _pid_running(owner["pid"]):
                    self.log(f"taking over the stale lock {self.path} of pid {owner['pid']} (no longer running, "
                             f"started {owner.get('started', '?')})")
                    self.path.unlink(missing_ok=True)
                    continue
                raise ConfigError(
                    f"{self.path.parent} is in use by pid {owner.get('pid', '?')} on host {owner.get('host', '?')} "
                    f"since {owner.get('started', '?')}: stop that run, or choose another experiment folder "
                    f"(delete {self.path} only if that run is known to be dead)") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return
        raise ConfigError(f"could not take the lock {self.path}")

    def release(self) -> None:
        if self.held and (self.owner() or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> ExperimentLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent (the torchrun agent) dies; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class ParentWatch:
    """Remembers the parent at start; ``alive()`` is False once the process has been re-parented (parent died)."""

    def __init__(self):
        self.parent = os.getppid()

    def alive(self) -> bool:
        return os.getppid() == self.parent
