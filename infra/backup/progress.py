"""How backup and restore report what they do: a line per step, and byte counts per phase
(the tasks draw rich progress bars from them; tests print or keep quiet)."""

from __future__ import annotations

from typing import Protocol


class BackupProgress(Protocol):
    def step(self, text: str) -> None:
        """A milestone that stays on screen."""
        ...

    def advance(self, phase: str, done: int, total: int | None) -> None:
        """``done`` of ``total`` bytes of ``phase`` (``total`` None: not known yet)."""
        ...


class Silent:
    def step(self, text: str) -> None:
        return None

    def advance(self, phase: str, done: int, total: int | None) -> None:
        return None


class Counter:
    """A running byte count for one phase, reported as it grows."""

    def __init__(self, progress: BackupProgress, phase: str, total: int | None) -> None:
        self.progress, self.phase, self.total, self.done = progress, phase, total, 0
        progress.advance(phase, 0, total)

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        self.progress.advance(self.phase, self.done, self.total)
