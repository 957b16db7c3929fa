"""SIGKILL the postmaster of a data directory and wait until a new one can be started there."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

KILL_WAIT_S = 15.0  # for the killed postmaster (and its backends) to be gone


@dataclass(frozen=True)
class Kill:
    pid: int
    backends: int  # children of the postmaster when it was killed
    backends_killed: int  # of those, still alive once the postmaster was gone
    gone_after_s: float
    stale_files_removed: bool


def _gone(proc: psutil.Process) -> bool:
    """Exited; a zombie counts as gone only for the caller that does not need the pid free."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.02) + 1):
        if predicate():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return predicate()


def kill_postmaster(data_dir: Path) -> Kill:
    """SIGKILL the postmaster of ``data_dir``; return once ``restart()`` can start a new one.

    The postmaster is not our child, so its zombie is reaped by PID 1 (about once a second
    here). PostgreSQL refuses to start while the pid in ``postmaster.pid`` (and in the socket
    lock file) still exists, zombie included, and pgserver's ``restart()`` believes such a
    server is running, so: wait until the pid is really free, SIGKILL any backend that
    outlived the postmaster, and only if a zombie is never reaped remove the stale lock files
    (nobody holds them: a zombie has no memory, sockets or files).
    """
    pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    postmaster = psutil.Process(pid)
    backends = postmaster.children(recursive=True)
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    assert _wait(lambda: _gone(postmaster), KILL_WAIT_S), f"postmaster {pid} survived SIGKILL"
    survivors = [proc for proc in backends if not _gone(proc)]
    for proc in survivors:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    assert _wait(lambda: all(_gone(proc) for proc in backends), KILL_WAIT_S), [
        proc.pid for proc in backends if not _gone(proc)
    ]
    reaped = _wait(lambda: not psutil.pid_exists(pid), KILL_WAIT_S)
    gone_after = time.monotonic() - started
    if not reaped:  # a zombie nobody reaps: its lock files are stale
        assert postmaster.status() == psutil.STATUS_ZOMBIE, f"postmaster {pid} still running"
        (data_dir / "postmaster.pid").unlink(missing_ok=True)
        for lock in data_dir.glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)
    return Kill(pid, len(backends), len(survivors), gone_after, not reaped)
