"""Run a project module where the file store is: here, or inside the stack's API container.

Why: the ``media-storage`` volume of a container stack is mounted only in the API container
(whose env also has MA_STORAGE_ROOT, and MA_DB_URL_FILE: the application role's URL). A
retention sweep or an outbox listing run on the host against that stack's database would look
at the host's ``.data/storage`` instead, and take every upload for a missing file.
``stack_ops.file_store_target()`` decides where; this module runs ``python -m <module>`` there
and streams its output line by line.
"""

from __future__ import annotations

import codecs
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import closing, suppress
from dataclasses import dataclass, field
from typing import Any

from docker.errors import DockerException

from app_patch.errors import OperatorError
from app_patch.settings import PROJECT_ROOT
from infra import docker_host
from infra.stack import API_USER

CONTAINER_PYTHON = "python"  # the image's venv is first on PATH
EXEC_IDLE_TIMEOUT_S = 3600  # longest silence accepted from a command running in the container
_STDERR_TAIL = 40

LineHandler = Callable[[str], None]
ProgressHandler = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class LocalTarget:
    """Run here, with this host's settings (explicit store settings, or no container stack)."""

    reason: str


@dataclass(frozen=True)
class ContainerTarget:
    """Run inside this running container, as the user that owns the storage volume."""

    container: str
    user: str = API_USER


FileStoreTarget = LocalTarget | ContainerTarget


class StackNotRunningError(OperatorError):
    """A container stack is recorded but its API container cannot run commands."""


@dataclass(frozen=True)
class ModuleRun:
    """How a ``python -m`` run ended; stderr keeps only its last lines (for the error)."""

    command: str
    code: int
    stderr: tuple[str, ...]

    def error_line(self) -> str:
        """The run's own ``error:`` line when it printed one, else one line saying it failed."""
        for line in reversed(self.stderr):
            if line.startswith("error:"):
                return line
        last = next((line for line in reversed(self.stderr) if line.strip()), "no output")
        return f"error: `{self.command}` failed (exit {self.code}): {last.strip()}"


def run_module(
    target: FileStoreTarget,
    module: str,
    args: Sequence[str],
    on_stdout: LineHandler,
    env: Mapping[str, str] | None = None,
) -> ModuleRun:
    """``python -m module args`` at ``target``; each stdout line goes to ``on_stdout`` as it
    arrives. ``env`` is added to the environment of the run (the container's own env stays)."""
    if isinstance(target, ContainerTarget):
        return _exec_in_container(target, [CONTAINER_PYTHON, "-m", module, *args], on_stdout, env)
    return _run_here([sys.executable, "-m", module, *args], on_stdout, env)


def _run_here(
    command: list[str], on_stdout: LineHandler, env: Mapping[str, str] | None
) -> ModuleRun:
    with tempfile.TemporaryFile("w+", encoding="utf-8") as errors:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,  # a file, not a pipe: a chatty stderr cannot block the child
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        assert process.stdout is not None
        with process:
            for line in process.stdout:
                on_stdout(line.rstrip("\r\n"))
        errors.seek(0)
        tail = deque((line.rstrip("\r\n") for line in errors), maxlen=_STDERR_TAIL)
    shown = " ".join(["python", *command[1:]])
    return ModuleRun(shown, process.returncode, tuple(tail))


class _LineSplitter:
    """Bytes in arbitrary chunks -> whole decoded lines, in order."""

    def __init__(self, on_line: LineHandler) -> None:
        self.on_line = on_line
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.pending = ""

    def feed(self, chunk: bytes) -> None:
        self.pending += self.decoder.decode(chunk)
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.on_line(line.rstrip("\r"))

    def close(self) -> None:
        self.pending += self.decoder.decode(b"", final=True)
        if self.pending:
            self.on_line(self.pending.rstrip("\r"))
        self.pending = ""


def _exec_in_container(
    target: ContainerTarget,
    command: list[str],
    on_stdout: LineHandler,
    env: Mapping[str, str] | None,
) -> ModuleRun:
    shown = f"docker exec {target.container} {' '.join(command)}"
    tail: deque[str] = deque(maxlen=_STDERR_TAIL)
    out, err = _LineSplitter(on_stdout), _LineSplitter(tail.append)
    try:
        with closing(docker_host.client(timeout_s=EXEC_IDLE_TIMEOUT_S)) as engine:
            created = engine.api.exec_create(
                target.container, command, user=target.user, environment=dict(env or {}) or None
            )
            exec_id = str(created["Id"])
            try:
                for stdout, stderr in engine.api.exec_start(exec_id, stream=True, demux=True):
                    if stdout:
                        out.feed(stdout)
                    if stderr:
                        err.feed(stderr)
            except KeyboardInterrupt:
                _interrupt(engine.api.exec_inspect(exec_id))
                raise
            out.close()
            err.close()
            code = engine.api.exec_inspect(exec_id).get("ExitCode")
    except (DockerException, OSError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StackNotRunningError(
            f"cannot run `{shown}`: {detail}; is the stack up (`invoke up`)?"
        ) from None
    return ModuleRun(shown, -1 if code is None else int(code), tuple(tail))


def _interrupt(inspected: Mapping[str, Any]) -> None:
    """Ctrl-C here must stop the run in the container too: Docker leaves an exec'd process
    running when its client goes away. Its host pid is only ours to signal on a local engine."""
    pid = int(inspected.get("Pid") or 0)
    remote = os.environ.get("DOCKER_HOST", "unix://").split("://", 1)[0] != "unix"
    if pid <= 0 or remote or not inspected.get("Running"):
        return
    with suppress(OSError):  # not ours to signal (rootless engine, other pid namespace)
        os.kill(pid, signal.SIGINT)


# ---------------------------------------------------------------- retention


@dataclass
class RetentionReport:
    """The final ``{"event": "report", ...}`` line of ``python -m app_patch.retention``, in the
    shape the summary table needs (the same as ``SweepReport``'s)."""

    dry_run: bool
    policies: dict[str, tuple[int, int]]
    skipped: int = 0
    error_count: int = 0
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> RetentionReport:
        policies = {
            str(name): (int(totals["objects"]), int(totals["bytes"]))
            for name, totals in dict(event["policies"]).items()
        }
        return cls(
            dry_run=bool(event["dry_run"]),
            policies=policies,
            skipped=int(event.get("skipped", 0)),
            error_count=int(event.get("error_count", 0)),
            errors=[str(line) for line in event.get("errors", [])],
            elapsed_s=float(event.get("elapsed_s", 0.0)),
        )

    def summary_rows(self) -> list[tuple[str, int, int]]:
        """(policy, objects, bytes) per policy plus a ``total`` row, like ``SweepReport``."""
        rows = [(name, objects, nbytes) for name, (objects, nbytes) in self.policies.items()]
        total = (sum(r[1] for r in rows), sum(r[2] for r in rows))
        return [*rows, ("total", *total)]


def retention_in_container(
    target: ContainerTarget,
    *,
    dry_run: bool,
    policies: Iterable[str],
    on_progress: ProgressHandler,
    on_output: LineHandler,
) -> tuple[RetentionReport, int]:
    """``python -m app_patch.retention --progress`` in the API container: progress events go
    to ``on_progress``, other stdout lines to ``on_output``; returns the report and the exit
    code. A refusal (its ``error:`` line) or a run without a report is an ``OperatorError``.

    The operator's ``MA_RETENTION_*`` knobs from this environment apply to the run, as they do
    to a local run; the store, database and Redis are the container's own."""
    args = ["--progress"]
    if dry_run:
        args.append("--dry-run")
    names = ",".join(policies)
    if names:
        args += ["--policy", names]
    env = {k: v for k, v in os.environ.items() if k.startswith("MA_RETENTION_")}
    reports: list[RetentionReport] = []

    def on_line(line: str) -> None:
        event = _json_event(line)
        try:
            if event is not None and event.get("event") == "progress":
                total = event.get("total")
                done = int(event["done"])
                on_progress(str(event["policy"]), done, None if total is None else int(total))
                return
            if event is not None and event.get("event") == "report":
                reports.append(RetentionReport.from_event(event))
                return
        except (KeyError, TypeError, ValueError):
            pass  # not the shape we know: show it as it is
        if line.strip():
            on_output(line)

    run = run_module(target, "app_patch.retention", args, on_line, env)
    if not reports:
        if run.code == 0:
            raise OperatorError(f"`{run.command}` printed no report (exit 0)")
        raise OperatorError(run.error_line().removeprefix("error:").strip())
    return reports[-1], run.code


def _json_event(line: str) -> dict[str, Any] | None:
    """A JSON object line with an ``event`` key, else None (a plain line)."""
    stripped = line.strip()
    if not stripped.startswith("{"):
        return None
    try:
        loaded = json.loads(stripped)
    except json.JSONDecodeError:
        return None
    return loaded if isinstance(loaded, dict) and "event" in loaded else None


# ---------------------------------------------------------------- outbox


@dataclass(frozen=True)
class OutboxListing:
    """``python -m app_patch.outbox list --json``: entries waiting for PostgreSQL, and the
    ones the replayer set aside (``failed``), as the module printed them."""

    pending: list[dict[str, Any]]
    failed: list[dict[str, Any]]


def outbox_list(target: FileStoreTarget) -> OutboxListing:
    """The outbox at ``target``; a failed run or unreadable output is an ``OperatorError``."""
    lines: list[str] = []
    run = run_module(target, "app_patch.outbox", ["list", "--json"], lines.append)
    if run.code != 0:
        raise OperatorError(run.error_line().removeprefix("error:").strip())
    try:
        loaded = json.loads("\n".join(lines))
        return OutboxListing(
            pending=[dict(e) for e in loaded.get("pending", [])],
            failed=[dict(e) for e in loaded.get("failed", [])],
        )
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        first = next((line for line in lines if line.strip()), "no output")
        raise OperatorError(f"`{run.command}` printed no JSON listing: {first[:200]}") from None


def outbox_retry(target: FileStoreTarget, entry: str) -> list[str]:
    """Move one failed entry (job id or file name) back to pending; returns what it printed."""
    lines: list[str] = []
    run = run_module(target, "app_patch.outbox", ["retry", entry], lines.append)
    if run.code != 0:
        raise OperatorError(run.error_line().removeprefix("error:").strip())
    return [line for line in lines if line.strip()]
