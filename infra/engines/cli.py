"""Run an engine's CLI (compose, docker, pulumi) with its output streamed to the progress
display, and its failure raised as the engine's one-line error."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from infra.engines.kinds import EngineError
from infra.progress import CommandFailed, Progress, run_streaming


def stream_cli(
    command: Sequence[str],
    progress: Progress,
    *,
    shown: str,
    error: type[EngineError],
    failed: Callable[[CommandFailed], str],
    timeout_s: float,
    cwd: Path | None = None,
) -> str:
    """Say ``shown``, run ``command`` and return its output. A non-zero exit raises ``error``
    with ``failed(exc)`` as its message; a timeout raises ``error`` saying so."""
    progress.step(shown)
    try:
        return run_streaming(command, progress, cwd=cwd, timeout_s=timeout_s)
    except CommandFailed as exc:
        raise error(failed(exc)) from None
    except TimeoutError as exc:
        raise error(str(exc)) from None
