"""Shared lookups: readers of one key in this process share one GET and one load.

``SharedGets``: readers that arrive while a GET of the key is in flight share its reply.
``SingleFlights``: concurrent misses of one key share one lookup (a task the readers
shield). A write detaches both for its key, so a read that starts after the write returned
never joins one that began before it (the flight is marked stale: it must not fill).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

T = TypeVar("T")


class Flight:
    """One in-progress lookup that concurrent readers of the same key share."""

    __slots__ = ("stale", "task")

    def __init__(self) -> None:
        self.stale = False
        self.task: asyncio.Task[Any] | None = None


class SharedGets:
    """One GET of a key at a time; the first reader does it itself (no task)."""

    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[object]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._pending

    async def get(self, key: str, fetch: Callable[[], Awaitable[object]]) -> object:
        """``fetch()``'s reply, shared with every reader of ``key`` that arrives meanwhile.
        If the first reader is cancelled the others see a miss (None) and look again."""
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        shared: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending[key] = shared
        raw: object = None
        try:
            raw = await fetch()
        finally:
            if self._pending.get(key) is shared:  # a write may have detached it already
                del self._pending[key]
            shared.set_result(raw)
        return raw

    def detach(self, key: str) -> None:
        self._pending.pop(key, None)


class SingleFlights:
    """Concurrent lookups of one key share one task."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._flights

    async def run(
        self,
        key: str,
        work: Callable[[Flight], Coroutine[Any, Any, T]],
        on_join: Callable[[], None],
    ) -> T:
        """Join the lookup of ``key`` in flight (``on_join``) or start ``work`` as one."""
        flight = self._flights.get(key)
        if flight is not None and flight.task is not None:
            on_join()
            return cast(T, await asyncio.shield(flight.task))
        flight = Flight()
        task = asyncio.create_task(work(flight))
        flight.task = task
        self._flights[key] = flight

        def done(finished: asyncio.Task[Any], key: str = key, flight: Flight = flight) -> None:
            if self._flights.get(key) is flight:
                del self._flights[key]
            if not finished.cancelled():
                finished.exception()  # retrieved: every waiter may have been cancelled

        task.add_done_callback(done)
        return await asyncio.shield(task)

    def detach(self, key: str) -> None:
        """Later readers start a new lookup; the detached one must not fill."""
        flight = self._flights.pop(key, None)
        if flight is not None:
            flight.stale = True

    def keys(self, prefix: str) -> list[str]:
        """The keys in flight that start with ``prefix``."""
        return [key for key in self._flights if key.startswith(prefix)]
