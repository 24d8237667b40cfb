"""One run per experiment folder, and workers that do not outlive their launcher.

:class:`ExperimentLock` is a lock file (``<experiment>/.lock``: host, pid, start time) that rank 0 creates atomically
before anything is written into the folder, and whose modification time a background thread renews (the heartbeat,
every ``timeout / 10`` seconds). A second launch into the same folder stops at once with the owner's details. A lock
is taken over, with a message, when its process no longer runs on this host (a SIGKILLed run), or when it comes from
another host and its heartbeat is older than ``GIGATOK_LOCK_TIMEOUT`` seconds (default 600: a node that died, a job
requeued onto other nodes). On a shared filesystem the clocks of the nodes must agree to well under the timeout.

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
import threading
import time
from pathlib import Path

from utils.config import ConfigError

LOCK_NAME = ".lock"
DEFAULT_LOCK_TIMEOUT = 600.0


def lock_timeout() -> float:
    """Seconds without a heartbeat after which another host's lock counts as dead (``GIGATOK_LOCK_TIMEOUT``)."""
    text = os.environ.get("GIGATOK_LOCK_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_LOCK_TIMEOUT
    except ValueError:
        raise ConfigError(f"GIGATOK_LOCK_TIMEOUT must be a number of seconds, got {text!r}") from None
    if value <= 0:
        raise ConfigError(f"GIGATOK_LOCK_TIMEOUT must be positive, got {text!r}")
    return value


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

    def __init__(self, folder: str | os.PathLike, log=print, timeout: float | None = None):
        self.path = Path(folder) / LOCK_NAME
        self.log = log
        self.held = False
        self.timeout = lock_timeout() if timeout is None else float(timeout)
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

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
                age = self._heartbeat_age()
                if not same_host and age is not None and age > self.timeout:
                    self.log(f"taking over the stale lock {self.path} of pid {owner.get('pid', '?')} on host "
                             f"{owner.get('host', '?')}: no heartbeat for {age:.0f} s (> GIGATOK_LOCK_TIMEOUT = "
                             f"{self.timeout:.0f} s)")
                    self.path.unlink(missing_ok=True)
                    continue
                beat = f"; last heartbeat {age:.0f} s ago" if age is not None else ""
                raise ConfigError(
                    f"{self.path.parent} is in use by pid {owner.get('pid', '?')} on host {owner.get('host', '?')} "
                    f"since {owner.get('started', '?')}{beat}: stop that run, or choose another experiment folder "
                    f"(a lock from another host is taken over once its heartbeat is older than "
                    f"GIGATOK_LOCK_TIMEOUT = {self.timeout:.0f} s; delete {self.path} only if that run is known to "
                    "be dead)") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            self._stop.clear()
            self._heartbeat = threading.Thread(target=self._beat, name="gigatok-lock-heartbeat", daemon=True)
            self._heartbeat.start()
            return
        raise ConfigError(f"could not take the lock {self.path}")

    def _heartbeat_age(self) -> float | None:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return None

    def _beat(self) -> None:
        """Renew the lock's modification time while the run lives (daemon thread; ends with the process)."""
        while not self._stop.wait(self.timeout / 10):
            try:
                os.utime(self.path)
            except OSError:
                pass  # removed or unreachable for a moment: the next beat tries again

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
            self._heartbeat = None
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
