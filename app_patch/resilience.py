"""Graceful degradation: a circuit breaker per dependency and what counts as an outage.

While PostgreSQL is down the API keeps analysing and defers the history to the outbox
(``app_patch.outbox``); the breaker decides when it is down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import psycopg
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from sqlalchemy import exc as sa_exc

log = logging.getLogger(__name__)
T = TypeVar("T")
BreakerState = Literal["closed", "open", "half-open"]


class DependencyUnavailableError(RuntimeError):
    """The dependency is down (or its breaker is open); callers degrade instead of failing."""

    def __init__(self, name: str, cause: BaseException | None = None) -> None:
        super().__init__(f"{name} unavailable" + (f": {cause}" if cause else " (breaker open)"))
        self.name = name


def is_database_outage(exc: BaseException) -> bool:
    """Connection-level failures count against the breaker; bad queries and conflicts do not."""
    if isinstance(exc, sa_exc.DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(
            exc, sa_exc.OperationalError | sa_exc.InterfaceError
        )
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.PendingRollbackError):
        return True  # pool exhausted by hung connections; a transaction broken by a dead one
    # a bare OSError may come from the file store (EIO, EROFS): never PostgreSQL's breaker
    return isinstance(exc, psycopg.OperationalError | ConnectionError | asyncio.TimeoutError)


class Breaker:
    """One named circuit (purgatory) that only counts the failures ``is_outage`` accepts."""

    def __init__(
        self,
        name: str,
        *,
        threshold: int,
        recovery_s: float,
        is_outage: Callable[[BaseException], bool],
    ) -> None:
        self.name = name
        self._is_outage = is_outage
        self._factory = AsyncCircuitBreakerFactory(
            default_threshold=threshold,
            default_ttl=recovery_s,
            exclude=[(Exception, lambda exc: not is_outage(exc))],
        )
        self._state: BreakerState = "closed"
        self.opened_total = 0

    @property
    def state(self) -> BreakerState:
        return self._state

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``; an outage or an open circuit raises DependencyUnavailableError."""
        breaker = await self._factory.get_breaker(self.name)
        try:
            async with breaker:
                result = await operation()
        except OpenedState:
            self._set_state(breaker.context.state)
            raise DependencyUnavailableError(self.name) from None
        except Exception as exc:
            self._set_state(breaker.context.state)
            if self._is_outage(exc):
                raise DependencyUnavailableError(self.name, exc) from exc
            raise
        self._set_state(breaker.context.state)
        return result

    def _set_state(self, purgatory_state: str) -> None:
        state: BreakerState = {"opened": "open", "half-opened": "half-open"}.get(
            purgatory_state, "closed"
        )  # type: ignore[assignment]
        if state != self._state:
            log.warning("breaker %s: %s -> %s", self.name, self._state, state)
            if state == "open":
                self.opened_total += 1
        self._state = state
