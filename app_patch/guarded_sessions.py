"""Database work behind a guard (the PostgreSQL breaker): one transaction or one read at a time,
and the base of the services that pair it with the Redis cache."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch.cache import RedisCache

T = TypeVar("T")


class DatabaseGuard(Protocol):
    """Runs one database operation, e.g. behind a circuit breaker (breaker.Breaker.call)."""

    async def __call__(self, operation: Callable[[], Awaitable[T]]) -> T: ...


async def unguarded(operation: Callable[[], Awaitable[T]]) -> T:
    """The guard of a caller without a breaker (tests, one-shot tools)."""
    return await operation()


class GuardedSessions:
    """Sessions whose every use runs through ``guard``: with a breaker, an outage surfaces as
    ``DependencyUnavailableError`` instead of a driver error."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        guard: DatabaseGuard = unguarded,
    ):
        self._sessions = session_factory
        self._guard = guard

    async def write(self, change: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """``change`` in its own transaction, committed before this returns."""

        async def in_transaction() -> T:
            async with self._sessions.begin() as session:
                return await change(session)

        return await self._guard(in_transaction)

    async def read(self, query: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """``query`` in a session of its own (no explicit transaction)."""

        async def in_session() -> T:
            async with self._sessions() as session:
                return await query(session)

        return await self._guard(in_session)


class CachedService:
    """Base of the use cases that go to PostgreSQL through ``GuardedSessions`` and keep the
    Redis cache in step (``service.HistoryService``, ``media_lookup.MediaLookup``)."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        cache: RedisCache,
        guard: DatabaseGuard = unguarded,
    ):
        self._db = GuardedSessions(session_factory, guard)
        self.cache = cache
