"""Redis calls behind the breaker and a hard deadline: a failed call answers FAILED, never raises.

Every call has a deadline (``RedisSettings.op_timeout_s``), redis-py retries are off, and the
circuit breaker (``app_patch.breaker``, one probe at a time when half-open) skips calls while
Redis is down. Errors and skipped calls are counted per kind in the cache's ``CacheStats``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Final, Literal, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app_patch.breaker import Breaker, BreakerState
from app_patch.cache.client import Commands, Op, make_client
from app_patch.cache.keys import Kind
from app_patch.cache.stats import CacheStats
from app_patch.settings import Settings

log = logging.getLogger(__name__)

BREAKER_NAME: Final = "redis"

T = TypeVar("T")
CacheState = Literal["ok", "degraded", "down"]


class _Failed(enum.Enum):
    FAILED = "failed"


FAILED: Final = _Failed.FAILED


class GuardedRedis:
    """The cache's Redis client (``None`` when disabled or closed), its breaker and counters."""

    def __init__(self, settings: Settings, url: str | None) -> None:
        self.op_timeout = settings.redis.op_timeout_s
        self.breaker = Breaker(
            BREAKER_NAME,
            threshold=settings.cache.breaker_failure_threshold,
            recovery_s=settings.cache.breaker_recovery_s,
            single_probe=True,
            on_change=self._on_breaker_change,
        )
        self.client: Redis | None = None
        if url is None or not settings.cache.enabled:
            why = "no Redis URL configured" if url is None else "MA_CACHE_ENABLED=false"
            log.info("cache disabled (%s): every read goes to PostgreSQL", why)
        else:
            self.client = make_client(settings.redis, url)
            self.cmd = Commands(self.client)
        self.stats = CacheStats(enabled=self.client is not None, breaker=self.breaker)

    async def call(self, kind: Kind | None, op: Op[T]) -> T | Literal[_Failed.FAILED]:
        """Run one Redis call with a hard deadline; FAILED instead of any error. While the
        breaker is open (or its one probe is running) the call is skipped without raising."""
        client = self.client
        if client is None:
            return FAILED
        attempt = self.breaker.attempt()
        if attempt is None:
            self._count(kind, "bypassed")
            return FAILED
        try:
            with attempt:
                async with asyncio.timeout(self.op_timeout):
                    return await op(client)
        except Exception as exc:
            self._count(kind, "errors")
            level = logging.DEBUG if isinstance(exc, RedisError | OSError) else logging.WARNING
            log.log(level, "cache call failed: %r", exc, exc_info=level > logging.DEBUG)
        return FAILED

    def _count(self, kind: Kind | None, counter: Literal["bypassed", "errors"]) -> None:
        if kind is None:
            if counter == "errors":
                self.stats.errors_other += 1
            return
        stats = self.stats.kinds[kind]
        setattr(stats, counter, getattr(stats, counter) + 1)

    def _on_breaker_change(self, before: BreakerState, after: BreakerState) -> None:
        if after is BreakerState.open:
            log.warning(
                "Redis circuit breaker opened: cache bypassed for %.1fs, reads use PostgreSQL",
                self.breaker.recovery_s,
            )
        elif after is BreakerState.closed:
            log.info("Redis circuit breaker closed: cache back in use")

    async def ping(self) -> bool:
        """True when Redis answers; goes through the breaker, so it doubles as a probe."""
        return await self.call(None, Commands.ping()) is not FAILED

    @property
    def state(self) -> CacheState:
        """``ok``: in use and healthy; ``degraded``: recent errors or probing; ``down``:
        breaker open or cache disabled. Redis never gates readiness."""
        if self.client is None:
            return "down"
        gate = self.breaker.gate()
        if gate == "open":
            return "down"
        if gate == "probe":
            return "degraded"
        return "degraded" if self.breaker.failure_count else "ok"

    async def disconnect(self) -> None:
        """Drop the client: every later call answers FAILED."""
        client, self.client = self.client, None
        if client is not None:
            await client.aclose()
