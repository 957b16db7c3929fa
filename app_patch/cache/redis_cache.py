"""The read-through cache of the history (``RedisCache``).

It follows the correctness rules in the package docstring (``app_patch.cache``): conditional
fills, ranked write-throughs, stale flights after a write, dirty keys, one GET per hit.
Every Redis call goes through ``GuardedRedis`` (``guarded``: a hard deadline and the circuit
breaker), so nothing here ever raises a Redis error to the caller; loaders' own errors
propagate.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal, TypeVar, cast

import orjson
from pydantic import BaseModel, ValidationError

from app_patch.cache.client import Commands
from app_patch.cache.dirty import DirtyKeys
from app_patch.cache.envelope import ABSENT, decode_hit, encode_body, parse_envelope
from app_patch.cache.flights import Flight, SharedGets, SingleFlights
from app_patch.cache.guarded import FAILED, CacheState, GuardedRedis
from app_patch.cache.keys import (
    HISTORY_PREFIX,
    HISTORY_VERSION_KEY,
    Kind,
    Placement,
    cache_key,
    history_digest,
    history_key,
    history_placement,
    jittered_ttl_ms,
    max_ttl_s,
)
from app_patch.schemas import HistoryFilter, HistoryPage
from app_patch.settings import Settings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class RedisCache:
    """Read-through cache with single-flight, TTL policies and a circuit breaker.

    With ``url=None`` (or ``CacheSettings.enabled=False``) it is a pass-through that still
    coalesces concurrent loads.
    """

    def __init__(self, settings: Settings, url: str | None) -> None:
        self._settings = settings.cache
        self._rng = random.Random()
        self._flights = SingleFlights()
        self._gets = SharedGets()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dirty = DirtyKeys()
        self._history_dirty_until = 0.0
        self._redis = GuardedRedis(settings, url)
        self.breaker = self._redis.breaker
        self.stats = self._redis.stats

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisCache:
        url = settings.redis.url.get_secret_value() if settings.redis.url else None
        return cls(settings, url)

    @property
    def enabled(self) -> bool:
        return self._redis.client is not None

    # ---- reads ---------------------------------------------------------------------------

    async def get_or_load(
        self,
        kind: Kind,
        ident: str,
        model: type[M],
        loader: Callable[[], Awaitable[M | None]],
        placement: Callable[[M], Placement],
    ) -> M | None:
        """The cached value, or ``loader()`` stored with ``placement(value)``.

        A hit is one GET and one decode: no task, no shield, no lock. Anything else (a miss,
        a tombstone, garbage, a dirty key, a lookup already in flight) goes through the
        single-flight, so concurrent misses of one key share one load. ``None`` is not cached.
        """
        key = cache_key(kind, ident)
        redis_ok = True
        if self._redis.client is not None and key not in self._flights and key not in self._dirty:
            raw = await self._shared_get(kind, key)
            if raw is FAILED:
                redis_ok = False  # one timeout per read, not two: the load skips Redis
            elif raw is not None:
                value = decode_hit(cast(bytes, raw), model)
                if value is not None:
                    self.stats.kinds[kind].hits += 1
                    return value

        async def lookup(flight: Flight) -> M | None:
            # a miss looks again inside the flight: a reader whose GET missed just before
            # another flight filled the key then finds the value instead of loading again
            usable = redis_ok and await self._repair(kind, key)
            return await self._read_through(flight, kind, key, model, loader, placement, usable)

        return await self._single_flight(key, kind, lookup)

    async def _shared_get(self, kind: Kind, key: str) -> object:
        """One GET of ``key`` at a time in this process (``SharedGets``)."""
        return await self._gets.get(key, lambda: self._redis.call(kind, Commands.get(key)))

    async def get_history_page(
        self,
        *,
        limit: int,
        cursor: str | None,
        filters: HistoryFilter | None,
        loader: Callable[[], Awaitable[HistoryPage]],
    ) -> HistoryPage:
        """One history page, cached under the current history version."""
        digest = history_digest(limit, cursor, filters)

        async def lookup(flight: Flight) -> HistoryPage | None:
            version: int | None = None
            if await self._repair_history():
                version = _version(
                    await self._redis.call(Kind.history, Commands.get(HISTORY_VERSION_KEY))
                )
            key = history_key(version or 0, digest)
            usable = version is not None
            return await self._read_through(
                flight, Kind.history, key, HistoryPage, loader, history_placement, usable
            )

        page = await self._single_flight(f"{HISTORY_PREFIX}flight:{digest}", Kind.history, lookup)
        assert page is not None  # a history loader always returns a page
        return page

    async def _read_through(
        self,
        flight: Flight,
        kind: Kind,
        key: str,
        model: type[M],
        loader: Callable[[], Awaitable[M | None]],
        placement: Callable[[M], Placement],
        usable: bool,
    ) -> M | None:
        stats = self.stats.kinds[kind]
        token: str | None = None  # the key's state at the miss; None: do not fill
        if usable:
            raw = await self._redis.call(kind, Commands.get(key))
            if raw is None:
                token = ABSENT
            elif raw is not FAILED:  # FAILED: Redis is sick, skip the fill (one timeout, not two)
                try:
                    envelope = parse_envelope(cast(bytes, raw))
                    if envelope.body:
                        stats.hits += 1
                        return model.model_validate_json(envelope.body)
                    token = str(envelope.gen)
                except (orjson.JSONDecodeError, ValidationError, ValueError):
                    stats.errors += 1
                    log.warning("invalidating undecodable cache entry %s", key)
                    await self._tombstone(kind, key)
            if token is not None:
                stats.misses += 1
        elif self._redis.client is None:
            stats.bypassed += 1
        stats.loads += 1
        loaded = await loader()
        if token is not None and loaded is not None and not flight.stale:
            await self._fill(kind, key, token, loaded, placement(loaded))
        return loaded

    async def _fill(
        self, kind: Kind, key: str, token: str, value: BaseModel, where: Placement
    ) -> None:
        try:
            body = encode_body(value)
        except orjson.JSONEncodeError:
            self.stats.kinds[kind].errors += 1
            return
        ttl = jittered_ttl_ms(self._settings, where.policy, self._rng)
        await self._redis.call(kind, self._redis.cmd.fill(key, token, where.rank, body, ttl))

    async def _single_flight(
        self,
        key: str,
        kind: Kind,
        work: Callable[[Flight], Coroutine[Any, Any, T]],
    ) -> T:
        def joined() -> None:
            self.stats.kinds[kind].coalesced += 1

        return await self._flights.run(key, work, joined)

    # ---- writes --------------------------------------------------------------------------

    async def put(self, kind: Kind, ident: str, value: BaseModel, placement: Placement) -> None:
        """Write-through after a committed change; never replaces a higher-ranked value."""
        await self._shielded(self._put(kind, cache_key(kind, ident), value, placement))

    async def invalidate(self, kind: Kind, ident: str) -> None:
        """Forget one key after a committed change."""
        await self._shielded(self._invalidate(kind, cache_key(kind, ident)))

    async def bump_history(self) -> None:
        """Make every cached history page unreachable (new version namespace)."""
        await self._shielded(self._bump_history())

    async def _put(self, kind: Kind, key: str, value: BaseModel, where: Placement) -> None:
        try:
            if self._redis.client is None:
                return
            try:
                body = encode_body(value)
            except orjson.JSONEncodeError:
                self.stats.kinds[kind].errors += 1
                self._after_write(kind, key, await self._tombstone(kind, key), "invalidations")
                return
            ttl = jittered_ttl_ms(self._settings, where.policy, self._rng)
            done = await self._redis.call(kind, self._redis.cmd.put(key, where.rank, body, ttl))
            self._after_write(kind, key, done is not FAILED, "writes")
        finally:
            self._detach(key)

    async def _invalidate(self, kind: Kind, key: str) -> None:
        try:
            if self._redis.client is not None:
                self._after_write(kind, key, await self._tombstone(kind, key), "invalidations")
        finally:
            self._detach(key)

    async def _tombstone(self, kind: Kind, key: str) -> bool:
        """Replace the value by a tombstone that outlives any entry the key could hold."""
        ttl = int(max_ttl_s(self._settings, kind) * 1000)
        return await self._redis.call(kind, self._redis.cmd.invalidate(key, ttl)) is not FAILED

    async def _bump_history(self) -> None:
        try:
            if self._redis.client is not None and not await self._bump_version_once():
                self._history_dirty_until = time.monotonic() + max_ttl_s(
                    self._settings, Kind.history
                )
        finally:
            for key in self._flights.keys(HISTORY_PREFIX):
                self._detach(key)

    async def _bump_version_once(self) -> bool:
        now_us = time.time_ns() // 1000
        done = await self._redis.call(
            Kind.history, self._redis.cmd.bump_version(HISTORY_VERSION_KEY, now_us)
        )
        if done is FAILED:
            return False
        self._history_dirty_until = 0.0
        self.stats.kinds[Kind.history].invalidations += 1
        return True

    def _after_write(
        self, kind: Kind, key: str, ok: bool, counter: Literal["writes", "invalidations"]
    ) -> None:
        if ok:
            self._dirty.clear(key)
            stats = self.stats.kinds[kind]
            setattr(stats, counter, getattr(stats, counter) + 1)
            return
        self._dirty.mark(key, max_ttl_s(self._settings, kind))

    def _detach(self, key: str) -> None:
        """Readers arriving after this write must not join a lookup that began before it."""
        self._gets.detach(key)
        self._flights.detach(key)

    async def _repair(self, kind: Kind, key: str) -> bool:
        """False while a write to ``key`` has not reached Redis (read PostgreSQL instead)."""
        if self._redis.client is None:
            return False
        until = self._dirty.until(key)
        if until is None:
            return True
        if time.monotonic() < until and not await self._tombstone(kind, key):
            return False
        self._dirty.clear(key)
        return True

    async def _repair_history(self) -> bool:
        if self._redis.client is None:
            return False
        if self._history_dirty_until and time.monotonic() < self._history_dirty_until:
            return await self._bump_version_once()
        self._history_dirty_until = 0.0
        return True

    async def _shielded(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a post-commit cache update to completion even if the caller is cancelled."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    # ---- health --------------------------------------------------------------------------

    async def ping(self) -> bool:
        """True when Redis answers; goes through the breaker, so it doubles as a probe."""
        return await self._redis.ping()

    @property
    def state(self) -> CacheState:
        """``ok``: in use and healthy; ``degraded``: recent errors or probing; ``down``:
        breaker open or cache disabled (see ``enabled``). Redis never gates readiness."""
        return self._redis.state

    async def close(self) -> None:
        """Finish pending write-throughs (each bounded by the deadline), then disconnect."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self._redis.op_timeout * 3)
        await self._redis.disconnect()


def _version(raw: object) -> int | None:
    """The history version from a GET; None when Redis failed or holds garbage."""
    if raw is None:
        return 0
    if isinstance(raw, bytes) and raw.isdigit():
        return int(raw)
    if raw is not FAILED:
        log.warning("ignoring malformed %s: %r", HISTORY_VERSION_KEY, raw)
    return None
