"""Keys whose last write did not reach Redis: reads in this process bypass them.

A key stays dirty until an invalidation succeeds or its old entry must have expired; the
history namespace has one such deadline of its own. The set is bounded: past
``MAX_DIRTY_KEYS`` the oldest mark is dropped (that key may be stale until its TTL).
"""

from __future__ import annotations

import logging
import time
from typing import Final

log = logging.getLogger(__name__)

MAX_DIRTY_KEYS: Final = 10_000


class DirtyKeys:
    def __init__(self, limit: int = MAX_DIRTY_KEYS) -> None:
        self._until: dict[str, float] = {}  # ordered by age: a re-marked key moves to the end
        self._limit = limit

    def __contains__(self, key: object) -> bool:
        return key in self._until

    def until(self, key: str) -> float | None:
        """When ``key``'s mark lapses (monotonic clock), or None when it is clean."""
        return self._until.get(key)

    def clear(self, key: str) -> None:
        self._until.pop(key, None)

    def mark(self, key: str, for_s: float) -> None:
        self._until.pop(key, None)  # re-insert at the end: the dict stays ordered by age
        self._until[key] = time.monotonic() + for_s
        if len(self._until) > self._limit:
            oldest = next(iter(self._until))
            del self._until[oldest]
            log.warning("too many unsynced cache keys; %s may be stale until its TTL", oldest)
