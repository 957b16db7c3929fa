"""The API as a local background process (the embedded engine has no API container).

``start`` checks the port is free, launches ``uvicorn api.main:app`` detached with a fresh
instance id (``MA_API_INSTANCE_ID``, echoed by ``/health/live``), records pid, instance, URL
and log offset in ``api.pid`` (JSON, beside the stack's record: ``.data/`` by default) and
waits until ``/health/live`` answers with *that* instance; ``confirm`` proves later that the
process answering is still ours; ``stop`` ends it. Bounded waits throughout. Every failure is
a :class:`LocalApiError`: one line that quotes the cause from the API log's last line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from app_patch.errors import OperatorError
from app_patch.settings import PROJECT_ROOT
from infra.engines.record import state_dir


# Beside the stack's record (``.data/`` unless MA_INFRA_STATE_FILE moves it): a test stack or
# a second checkout has its own local API record too.
def pid_file() -> Path:
    return state_dir() / "api.pid"


def log_file() -> Path:
    return state_dir() / "api.log"


INSTANCE_ENV = "MA_API_INSTANCE_ID"  # read by app_patch.health; echoed by /health/live


# An error line in the API log (structlog's ``[error    ]``, stdlib's ``ERROR:``, a raised
# exception's last line); not the logger name ``uvicorn.error`` that every line carries.
_ERROR_LINE = re.compile(
    r"\[(error|critical|exception)\s*\]|\bERROR\b|\bCRITICAL\b|\[Errno \d+\]"
    r"|^\w+(Error|Exception): "
)


class LocalApiError(OperatorError):
    """The local API is missing, not ours, or could not start (one line, with the cause)."""


@dataclass(frozen=True)
class Record:
    """What ``start`` wrote about the process it launched."""

    pid: int
    instance: str
    url: str
    log_offset: int = 0  # where this process's output starts in the log file


def read_record(pid_path: Path | None = None) -> Record | None:
    path = pid_file() if pid_path is None else pid_path
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Record(
            pid=int(raw["pid"]),
            instance=str(raw["instance"]),
            url=str(raw["url"]),
            log_offset=int(raw.get("log_offset", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, or an older plain-pid file: no instance to prove anything


def _write_record(record: Record) -> None:
    pid_file().parent.mkdir(parents=True, exist_ok=True)
    pid_file().write_text(json.dumps(asdict(record)), encoding="utf-8")


def _alive(pid: int) -> bool:
    """``pid`` runs and is a uvicorn (a recycled pid is not ours); reaps our own exited child."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: started by an earlier invoke
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: not ours
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the signal probe
    return b"uvicorn" in cmdline


def running_pid(pid_path: Path | None = None) -> int | None:
    """The recorded local API's pid when that process still runs."""
    record = read_record(pid_path)
    return record.pid if record is not None and _alive(record.pid) else None


def log_cause(offset: int = 0, log_path: Path | None = None) -> str:
    """The API log's last line since ``offset`` (the last error line when there is one), quoted."""
    path = log_file() if log_path is None else log_path
    try:
        with path.open("rb") as log:
            log.seek(max(0, offset))
            tail = log.read()[-64 * 1024 :].decode("utf-8", "replace")
    except OSError:
        return f"no log at {path}"
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    if not lines:
        return f"{path} has nothing from it"
    errors = [line for line in lines if _ERROR_LINE.search(line)]
    line = (errors or lines)[-1].split(" color_message=", 1)[0]
    return f'{path} ends: "{line[:300]}"'


def live_instance(url: str, timeout_s: float = 2) -> str | None:
    """The instance id ``url``'s ``/health/live`` reports (``""`` when it answers without one),
    None when nothing answers it with 200."""
    try:
        response = httpx.get(f"{url}/health/live", timeout=timeout_s)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        body = response.json()
    except ValueError:
        return ""
    instance = body.get("instance") if isinstance(body, dict) else None
    return str(instance) if instance else ""


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be ours (something answers there, or binding fails), or None."""
    try:
        with socket.create_connection((host, port), timeout=1):
            pass
    except OSError:
        pass
    else:
        try:
            status = httpx.get(f"http://{host}:{port}/health/live", timeout=2).status_code
            return f"a service answers HTTP {status} there"
        except httpx.HTTPError:
            return "a process accepts connections there"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or type(exc).__name__
    return None


def _taken(host: str, port: int, problem: str) -> LocalApiError:
    return LocalApiError(
        f"port {port} on {host} is taken ({problem}): stop that service or choose another "
        "port with `invoke up --port N`"
    )


def check_can_start(host: str, port: int) -> None:
    """Before anything is started: the port is free, or our recorded API already holds it."""
    url = f"http://{host}:{port}"
    record = read_record()
    if record is not None and record.url == url and _alive(record.pid):
        return
    problem = port_problem(host, port)
    if problem is not None:
        raise _taken(host, port, problem)


def start(env: Mapping[str, str], host: str, port: int, timeout_s: float = 30) -> str:
    """Start (or reuse our running) local API; returns its base URL once it answers as ours."""
    url = f"http://{host}:{port}"
    record = read_record()
    if record is not None and _alive(record.pid):
        if record.url == url:
            _wait_ours(record, timeout_s, None)
            return url
        stop()  # ours, on another address: move it
    problem = port_problem(host, port)
    if problem is not None:
        raise _taken(host, port, problem)
    state_dir().mkdir(parents=True, exist_ok=True)
    instance = uuid.uuid4().hex
    with open(log_file(), "ab") as log:
        offset = log.tell()
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port)],
            cwd=PROJECT_ROOT,
            env={**os.environ, **env, INSTANCE_ENV: instance},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the invoke process
        )
    record = Record(process.pid, instance, url, offset)
    _write_record(record)  # kept on failure too: verify then quotes the same log line
    _wait_ours(record, timeout_s, process)
    return url


def _wait_ours(record: Record, timeout_s: float, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout_s
    answered: str | None = None
    while time.monotonic() < deadline:
        # Our own child: its exit status (no pid reuse before it is reaped); else the pid.
        exited = process.poll() if process is not None else None
        if exited is not None or (process is None and not _alive(record.pid)):
            code = f" (exit code {exited})" if exited is not None else ""
            raise LocalApiError(
                f"the local API exited at start{code}; {log_cause(record.log_offset)}"
            )
        answered = live_instance(record.url, timeout_s=1)
        if answered == record.instance:
            return
        time.sleep(0.2)
    if process is not None:  # ours but not answering: do not leave it behind
        _terminate(record.pid, 5)
    seen = "nothing answers" if answered is None else f"instance {answered or '?'} answers"
    raise LocalApiError(
        f"the local API did not answer as ours on {record.url} within {timeout_s:.0f}s "
        f"({seen}, ours is {record.instance}); {log_cause(record.log_offset)}"
    )


def confirm(url: str) -> str:
    """Prove the process answering ``url`` is the local API ``start`` recorded; returns its
    instance id. A :class:`LocalApiError` (one line, with the log's cause) otherwise."""
    record = read_record()
    if record is None:
        raise LocalApiError(
            f"a local API at {url} is recorded but {pid_file()} is missing or unreadable "
            f"(no instance id to check): run invoke up; {log_cause(0)}"
        )
    if record.url != url:
        raise LocalApiError(
            f"the stack records the local API at {url} but {pid_file()} has {record.url}: "
            "run invoke up"
        )
    if not _alive(record.pid):
        raise LocalApiError(
            f"the local API (pid {record.pid}) is not running; {log_cause(record.log_offset)}"
        )
    answered = live_instance(url)
    if answered is None:
        raise LocalApiError(
            f"the local API (pid {record.pid}) does not answer on {url}; "
            f"{log_cause(record.log_offset)}"
        )
    if answered != record.instance:
        raise LocalApiError(
            f"another process answers on {url} (instance {answered or 'none'}, ours is "
            f"{record.instance}); {log_cause(record.log_offset)}"
        )
    return answered


def _terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM (graceful: the replayer and pools close), SIGKILL after ``timeout_s``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def stop(timeout_s: float = 15) -> bool:
    """End the recorded local API (only when that pid is still a uvicorn); drop the record."""
    pid = running_pid()
    if pid is None:  # an older checkout's plain-pid file
        try:
            legacy = int(pid_file().read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            legacy = 0
        pid = legacy if legacy > 0 and _alive(legacy) else None
    if pid is not None:
        _terminate(pid, timeout_s)
    pid_file().unlink(missing_ok=True)
    return pid is not None
