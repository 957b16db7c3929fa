"""Progress of long operations (image builds, the base-image seed, compose and Pulumi runs).

Library code reports through a :class:`Progress`: :meth:`~Progress.step` for a milestone
that stays on screen, :meth:`~Progress.detail` for the latest output line of the running
step (a build step, a compose line, a Pulumi resource), which a terminal shows in place.
The tasks pass a rich one (:class:`RichProgress`); tests and benchmarks print or keep quiet.
:func:`run_streaming` runs a command and streams its output lines to ``detail`` as they come,
keeping the tail for the error message.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from rich.console import Console
from rich.markup import escape
from rich.status import Status


class Progress(Protocol):
    def step(self, text: str) -> None: ...

    def detail(self, text: str) -> None: ...


class Quiet:
    """Reports nothing."""

    def step(self, text: str) -> None:
        return None

    def detail(self, text: str) -> None:
        return None


class Lines:
    """Every step and detail to ``write`` (a test's print, a benchmark's timestamped log)."""

    def __init__(self, write: Callable[[str], None] = print, details: bool = False) -> None:
        self._write = write
        self._details = details

    def step(self, text: str) -> None:
        self._write(text)

    def detail(self, text: str) -> None:
        if self._details:
            self._write(f"  {text}")


class RichProgress:
    """Steps as dim lines; the running step's latest output in a spinner line that is
    replaced in place (nothing but the steps stays on screen). Without a terminal, details
    are printed as lines so a CI log still shows the progress."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._status: Status | None = None
        self._last_step = ""

    def step(self, text: str) -> None:
        self._last_step = text
        self._console.print(f"[dim]{escape(text)}[/dim]")
        if self._status is not None:
            self._status.update(escape(text))

    def detail(self, text: str) -> None:
        line = text.strip()
        if not line:
            return
        if self._status is None:
            self._console.print(f"[dim]  {escape(line)}[/dim]")
        else:
            width = max(20, self._console.width - 4)
            self._status.update(f"[dim]{escape(line[:width])}[/dim]")

    @contextmanager
    def live(self) -> Iterator[RichProgress]:
        """Show the spinner line while the block runs (only on a terminal)."""
        if not self._console.is_terminal:
            yield self
            return
        with self._console.status("starting", spinner="dots") as status:
            self._status = status
            try:
                yield self
            finally:
                self._status = None


class CommandFailed(RuntimeError):
    def __init__(self, command: Sequence[str], code: int, tail: str) -> None:
        super().__init__(f"`{' '.join(command)}` failed ({code})")
        self.command = tuple(command)
        self.code = code
        self.tail = tail

    @property
    def last_line(self) -> str:
        """The command's last non-blank output line (what an error message quotes)."""
        lines = [line.strip() for line in self.tail.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def run_streaming(
    command: Sequence[str],
    progress: Progress,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 1800,
    keep: int = 60,
) -> str:
    """Run ``command`` with stdout and stderr merged, each line to ``progress.detail`` as it
    comes; return the whole output. A non-zero exit raises :class:`CommandFailed` (with the
    last ``keep`` lines); a run longer than ``timeout_s`` is killed and raises TimeoutError."""
    process = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=dict(env) if env is not None else dict(os.environ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    )
    timer = threading.Timer(timeout_s, process.kill)
    timer.start()
    output: list[str] = []
    tail: deque[str] = deque(maxlen=keep)
    started = time.monotonic()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            tail.append(line.rstrip())
            progress.detail(line.rstrip())
        code = process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    if time.monotonic() - started >= timeout_s and code != 0:
        raise TimeoutError(f"`{' '.join(command)}` did not finish within {timeout_s:.0f}s")
    if code != 0:
        raise CommandFailed(command, code, "\n".join(tail))
    return "".join(output)
