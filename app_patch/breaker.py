"""The circuit breaker: one per dependency (PostgreSQL, Redis), one state machine for both.

closed: failures that count (``is_outage``) are counted; ``threshold`` in a row open it, and
any other outcome resets the count. open: calls are refused for ``recovery_s``; the first
call after that is a probe (half-open). half-open: a failure opens it again, anything else
closes it. An exception that is not an ``Exception`` (cancellation) always counts.

With ``single_probe`` only one probe runs at a time and the others are refused as if open
(the cache: a dead Redis costs one timeout per recovery period, not one per reader).

``state`` is the state as the last finished call left it: a probe in flight still reads
``open`` (readiness and ``/metrics`` report settled states); ``gate()`` is the live view.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Literal, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
Gate = Literal["closed", "probe", "open"]


class BreakerState(enum.StrEnum):
    closed = "closed"
    half_open = "half-open"
    open = "open"


class DependencyUnavailableError(RuntimeError):
    """The dependency is down (or its breaker is open); callers degrade instead of failing."""

    def __init__(self, name: str, cause: BaseException | None = None) -> None:
        super().__init__(f"{name} unavailable" + (f": {cause}" if cause else " (breaker open)"))
        self.name = name


def _always(_: BaseException) -> bool:
    return True


class Breaker:
    """One named circuit; only the failures ``is_outage`` accepts count against it."""

    def __init__(
        self,
        name: str,
        *,
        threshold: int,
        recovery_s: float,
        is_outage: Callable[[BaseException], bool] = _always,
        single_probe: bool = False,
        on_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.recovery_s = recovery_s
        self._is_outage = is_outage
        self._single_probe = single_probe
        self._on_change = on_change or self._log_change
        self._live = BreakerState.closed
        self._settled = BreakerState.closed
        self._opened_at = 0.0
        self._probing = False
        self.failure_count = 0
        self.opened_total = 0

    @property
    def state(self) -> BreakerState:
        return self._settled

    def gate(self) -> Gate:
        """``closed``; ``open`` while calls are refused; ``probe`` when the next call probes."""
        if self._live is BreakerState.closed:
            return "closed"
        if (
            self._live is BreakerState.open
            and time.monotonic() <= self._opened_at + self.recovery_s
        ):
            return "open"
        return "probe"

    def attempt(self) -> Attempt | None:
        """Admit one call (a context manager that records its outcome), or None: refused."""
        gate = self.gate()
        if gate == "open" or (gate == "probe" and self._single_probe and self._probing):
            return None
        if gate == "probe":
            self._probing = True
            if self._live is BreakerState.open:
                self._move(BreakerState.half_open)
        return Attempt(self, probe=gate == "probe")

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``; an outage or an open circuit raises DependencyUnavailableError."""
        attempt = self.attempt()
        if attempt is None:
            raise DependencyUnavailableError(self.name)
        try:
            with attempt:
                return await operation()
        except Exception as exc:
            if self._is_outage(exc):
                raise DependencyUnavailableError(self.name, exc) from exc
            raise

    def _finish(self, probe: bool, exc: BaseException | None) -> None:
        if probe:
            self._probing = False
        failed = exc is not None and (not isinstance(exc, Exception) or self._is_outage(exc))
        if self._live is BreakerState.closed:
            self.failure_count = self.failure_count + 1 if failed else 0
            if self.failure_count >= self.threshold:
                self._open()
        elif self._live is BreakerState.half_open:
            if failed:
                self._open()
            else:
                self._move(BreakerState.closed)
        self._settled = self._live

    def _open(self) -> None:
        self._opened_at = time.monotonic()
        self.opened_total += 1
        self._move(BreakerState.open)

    def _move(self, state: BreakerState) -> None:
        before, self._live = self._live, state
        self.failure_count = 0
        self._on_change(before, state)

    def _log_change(self, before: BreakerState, after: BreakerState) -> None:
        log.warning("breaker %s: %s -> %s", self.name, before, after)


class Attempt:
    """One admitted call; leaving it records success or failure on the breaker."""

    __slots__ = ("_breaker", "_probe")

    def __init__(self, breaker: Breaker, *, probe: bool) -> None:
        self._breaker = breaker
        self._probe = probe

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._breaker._finish(self._probe, exc)
