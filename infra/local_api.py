"""The API as a local background process (the embedded engine has no API container).

``start`` launches ``uvicorn api.main:app`` detached, with its pid and log under ``.data/``,
and waits until ``/health/live`` answers; ``stop`` ends it. Bounded waits throughout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from infra.config import DATA_DIR
from infra.engine import REPO_ROOT

PID_FILE = DATA_DIR / "api.pid"
LOG_FILE = DATA_DIR / "api.log"


class LocalApiError(RuntimeError):
    pass


def running_pid(pid_file: Path = PID_FILE) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that exited: reap it
            return None
    except ChildProcessError:
        pass  # started by another process: signal 0 below tells
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def start(env: Mapping[str, str], host: str, port: int, timeout_s: float = 30) -> str:
    """Start (or reuse) the local API; returns its base URL once it answers."""
    url = f"http://{host}:{port}"
    if running_pid() is None:
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        with open(LOG_FILE, "ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "api.main:app",
                    "--host",
                    host,
                    "--port",
                    str(port),
                ],
                cwd=REPO_ROOT,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the invoke process
            )
        PID_FILE.write_text(str(process.pid))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if running_pid() is None:
            raise LocalApiError(f"the API exited at start; see {LOG_FILE}")
        try:
            if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise LocalApiError(f"the API did not answer on {url} within {timeout_s:.0f}s; see {LOG_FILE}")


def stop(timeout_s: float = 15) -> bool:
    """SIGTERM (graceful: the replayer and pools close), SIGKILL after ``timeout_s``."""
    pid = running_pid()
    if pid is None:
        PID_FILE.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and running_pid() is not None:
        time.sleep(0.1)
    if running_pid() is not None:
        os.kill(pid, signal.SIGKILL)
    PID_FILE.unlink(missing_ok=True)
    return True
