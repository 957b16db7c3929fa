"""What every task shares: the console, the one error wrapper, progress, the interpreter.

Nothing heavy is imported here (no SQLAlchemy, Alembic or Docker SDK): ``invoke --list`` and
``invoke --help`` load only this and the task modules; each task imports what it needs.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from invoke import Exit
from rich.console import Console

if TYPE_CHECKING:
    from infra.progress import RichProgress

console = Console(soft_wrap=True)
PY = shlex.quote(sys.executable)


def log(line: str) -> None:
    """A dim line (an operation's own output, already escaped by the caller)."""
    console.print(f"[dim]{line}[/dim]")


def progress() -> RichProgress:
    """How every task shows long operations: steps, and the running one's latest line."""
    from infra.progress import RichProgress

    return RichProgress(console)


@contextmanager
def task_errors() -> Iterator[None]:
    """Every expected failure of a task as one ``error:`` line and exit code 1; a bug keeps
    its traceback. The one wrapper of every task."""
    try:
        yield
    except Exit:
        raise
    except Exception as exc:
        line = failure_line(exc)
        if line is None:
            raise
        raise Exit(f"error: {line}", code=1) from None


def failure_line(exc: BaseException) -> str | None:
    """One line for a failure an operator can act on, None for a bug. The classes are
    imported here, on failure, so that a task that succeeds never pays for them."""
    from app_patch.errors import describe

    known = describe(exc) or (describe(exc.__cause__) if exc.__cause__ else None)
    if known:
        return _first_line(known)
    from docker.errors import DockerException

    from infra.config import ConfigError
    from infra.docker_host import DockerUnavailable, engine_address
    from infra.images import ImageBuildError

    if isinstance(exc, ConfigError | DockerUnavailable | ImageBuildError | TimeoutError):
        return _first_line(str(exc))
    if isinstance(exc, DockerException):
        return f"Docker engine at {engine_address()}: {_first_line(str(exc))}"
    return None


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or ["(no detail)"])[0]
