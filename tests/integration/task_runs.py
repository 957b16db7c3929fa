"""Running the invoke tasks in a subprocess, as an operator does, and reading their one-line
refusals (no tests here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# What an explicit target or a forced engine would be: none of it may leak into these tests.
SCRUBBED = {
    "MA_DB_URL",
    "DATABASE_URL",
    "MA_DB_MIGRATION_URL",
    "MA_REDIS_URL",
    "REDIS_URL",
    "MA_INFRA_ENGINE",
    "MA_API_PORT",
    "DOCKER_HOST",
}


def invoke(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def db_env(url: str | None) -> dict[str, str]:
    """This environment with ``url`` (or no database at all) as MA_DB_URL."""
    env = {k: v for k, v in os.environ.items() if k not in {"MA_DB_URL", "DATABASE_URL"}}
    if url is not None:
        env["MA_DB_URL"] = url
    return env


def run_task(
    *args: str, url: str | None, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``invoke`` with ``url`` (or no database at all) as MA_DB_URL."""
    return invoke(*args, env=db_env(url), cwd=cwd, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The task failed with exit 1 and exactly one ``error:`` line on stderr."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]
