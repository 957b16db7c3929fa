"""Small helpers shared by the benchmark modules: timing, bounded loops, subprocess runs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def pg_binary(name: str) -> Path | None:
    """``pgbench``/``psql`` from pgserver's build (``pgserver.POSTGRES_BIN_PATH``), else PATH."""
    import warnings
    from shutil import which

    bin_dir: Path | None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR warning
            from pgserver._commands import POSTGRES_BIN_PATH

        bin_dir = Path(POSTGRES_BIN_PATH)
    except Exception:  # pgserver missing or reorganised: fall back to PATH
        bin_dir = None
    if bin_dir is not None:
        candidate = bin_dir / name
        if candidate.exists():
            return candidate

    found = which(name)
    return Path(found) if found else None


@dataclass(frozen=True)
class Timed:
    seconds: float
    count: int

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")


async def run_workers(
    count: int, concurrency: int, work: Callable[[int], Awaitable[None]]
) -> Timed:
    """Run ``work(i)`` for i in range(count) on ``concurrency`` coroutines; wall time."""
    counter = iter(range(count))

    async def worker() -> None:
        for i in counter:  # shared iterator: each index taken exactly once
            await work(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, count)))))
    return Timed(time.perf_counter() - started, count)


@dataclass(frozen=True)
class ProcResult:
    seconds: float
    returncode: int
    stdout: str
    stderr: str


def run_timed(
    args: Sequence[str | os.PathLike[str]],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 600,
) -> ProcResult:
    """Run a command to completion; its wall time (bounded by ``timeout_s``)."""
    started = time.perf_counter()
    done = subprocess.run(
        [str(a) for a in args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return ProcResult(time.perf_counter() - started, done.returncode, done.stdout, done.stderr)


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class BenchError(RuntimeError):
    """A benchmark could not measure what it should (the run records the message)."""
