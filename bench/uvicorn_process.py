"""A benchmark's uvicorn server: its own process on 127.0.0.1, its environment and its CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from app_patch.settings import PROJECT_ROOT
from bench.common import BenchError, tail
from bench.env import BenchEnv
from infra.loopback import free_port

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def _clock_ticks() -> int:
    return int(os.sysconf("SC_CLK_TCK"))


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (and its reaped children's are not included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _clock_ticks()


def inherited_env() -> dict[str, str]:
    """This process's environment without ``DATABASE_URL`` and ``REDIS_URL``."""
    return {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}


def kit_env(env: BenchEnv, db_url: str, scratch: Path, max_uploads: int) -> dict[str, str]:
    """The kit's API on the benchmark's PostgreSQL and Redis, storage and data in ``scratch``."""
    return {
        **inherited_env(),
        "MA_DB_URL": db_url,
        "MA_REDIS_URL": env.redis_url,
        "MA_STORAGE_ROOT": str(scratch / "storage"),
        "MA_DATA_DIR": str(scratch / "data"),
        "MA_API_LOG_JSON": "true",  # as in the container
        "MA_API_MAX_CONCURRENT_UPLOADS": str(max_uploads),
    }


class UvicornProcess:
    """``uvicorn <target>`` on 127.0.0.1 in its own process group."""

    def __init__(self, target: str, env: dict[str, str], log_path: Path, name: str) -> None:
        self.target = target
        self.name = name  # how the errors name it
        self.port = free_port()
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self, ready: Callable[[], bool]) -> None:
        """Start the process and wait until ``ready()`` (bounded by ``START_TIMEOUT_S``)."""
        args = [
            sys.executable, "-m", "uvicorn", self.target,
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"uvicorn {self.name} exited: {self.log_tail()}")
            if ready():
                return
            time.sleep(0.2)
        raise BenchError(f"uvicorn {self.name} not ready in {START_TIMEOUT_S:.0f} s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self) -> str:
        try:
            return tail(self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # uvicorn: graceful shutdown, lifespan closes
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
