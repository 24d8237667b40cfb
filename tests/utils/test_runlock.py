"""utils.runlock: one run per experiment folder; a dead run's lock is taken over (same host: its pid is gone; another
host: its heartbeat is older than GIGATOK_LOCK_TIMEOUT)."""
from __future__ import annotations

import json
import os
import socket
import time

import pytest

from utils.config import ConfigError
from utils.runlock import ExperimentLock, lock_timeout


def _foreign_lock(folder, age_s: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    path.write_text(json.dumps({"host": "node-that-died", "pid": 12345, "started": "earlier", "argv": []}))
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_another_hosts_lock_is_taken_over_only_when_its_heartbeat_is_old(tmp_path):
    messages = []
    _foreign_lock(tmp_path / "fresh", age_s=5)
    with pytest.raises(ConfigError, match=r"in use by pid 12345 on host node-that-died.*last heartbeat 5 s ago.*"
                                          r"GIGATOK_LOCK_TIMEOUT = 60 s"):
        ExperimentLock(tmp_path / "fresh", messages.append, timeout=60).acquire()
    _foreign_lock(tmp_path / "stale", age_s=120)
    lock = ExperimentLock(tmp_path / "stale", messages.append, timeout=60)
    lock.acquire()
    try:
        assert "no heartbeat for 120 s (> GIGATOK_LOCK_TIMEOUT = 60 s)" in messages[-1]
        owner = json.loads((tmp_path / "stale" / ".lock").read_text())
        assert owner["host"] == socket.gethostname() and owner["pid"] == os.getpid()
    finally:
        lock.release()
    assert not (tmp_path / "stale" / ".lock").exists()


def test_the_heartbeat_keeps_a_live_lock_fresh(tmp_path):
    lock = ExperimentLock(tmp_path, print, timeout=0.5)  # a beat every 0.05 s
    lock.acquire()
    try:
        path = tmp_path / ".lock"
        os.utime(path, (time.time() - 100, time.time() - 100))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 0.3
    finally:
        lock.release()
    assert not lock.held and not (tmp_path / ".lock").exists()


def test_lock_timeout_from_the_environment(monkeypatch):
    monkeypatch.delenv("GIGATOK_LOCK_TIMEOUT", raising=False)
    assert lock_timeout() == 600.0
    monkeypatch.setenv("GIGATOK_LOCK_TIMEOUT", "90")
    assert lock_timeout() == 90.0
    monkeypatch.setenv("GIGATOK_LOCK_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="GIGATOK_LOCK_TIMEOUT must be a number"):
        lock_timeout()


def test_a_dead_process_lock_on_this_host_is_taken_over_at_once(tmp_path):
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": "x"}))
    messages = []
    lock = ExperimentLock(tmp_path, messages.append, timeout=600)
    lock.acquire()
    lock.release()
    assert f"taking over the stale lock {tmp_path / '.lock'} of pid {int(dead.stdout)}" in messages[0]
