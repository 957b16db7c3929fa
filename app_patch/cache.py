"""Redis read-through cache for the history; Redis is never the source of truth.

Keys are ``ma:v1:<kind>:<id>``; history pages live under ``ma:v1:history:<version>:<digest>``
and are invalidated all at once by bumping ``ma:v1:history:version``. Every TTL comes from
one policy in ``CacheSettings`` with +/- jitter.

A value is ``b"<rank>:<gen>:<orjson>"``; a tombstone (an invalidated key) is
``b"<rank>:<gen>:"``. ``gen`` grows with every write-through and invalidation of the key.
Correctness rules (see ``HistoryService`` for the write side):

* A read-through fill is conditional (Lua): it lands only if the key is still in the state
  the reader saw on its miss (absent, or the same tombstone generation). A reader that
  loaded an old state from PostgreSQL before a write committed can therefore never store
  it after the write, even if the key was invalidated in between. Invalidation writes a
  tombstone instead of ``DEL`` for that reason.
* A write-through is a ranked ``SET`` (Lua): it never replaces a higher rank, so a finished
  job is never replaced by a delayed "running" write-through.
* After a write, in-process single-flights for that key are detached and marked stale, so a
  read that starts after the write returned never joins a load that began before it.
* A write that could not reach Redis marks the key dirty: reads in this process bypass the
  key until an invalidation succeeds (or the old entry must have expired).
* A hit costs one GET (behind the breaker and the deadline) and one decode: single-flight,
  its task and shield are only for misses, dirty keys and lookups already in flight. Readers
  of one key that arrive while its GET is in flight share that GET's reply.

Not covered: a key evicted by Redis itself (maxmemory, FLUSHALL) between a write-through and
a concurrent reader's fill may take that reader's older state for up to its TTL.

Failure handling: every Redis call has a hard deadline (``RedisSettings.op_timeout_s``),
redis-py retries are off, and a circuit breaker (``app_patch.breaker``, one probe at a time
when half-open) short-circuits calls while Redis is down. Nothing here ever raises a Redis
error to the caller; loaders' own errors propagate.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal, TypeVar, cast

import orjson
from pydantic import BaseModel, ValidationError
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app_patch.breaker import Breaker, BreakerState
from app_patch.models import JobStatus
from app_patch.schemas import HistoryFilter, HistoryPage, JobOut
from app_patch.settings import CacheSettings, RedisSettings, Settings

log = logging.getLogger(__name__)

PREFIX: Final = "ma:v1"
HISTORY_VERSION_KEY: Final = f"{PREFIX}:history:version"
BREAKER_NAME: Final = "redis"
MAX_DIRTY_KEYS: Final = 10_000

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
CacheState = Literal["ok", "degraded", "down"]

# Lua: parse "<rank>:<gen>:<body>" -> exists, rank, gen, has_body.
_PARSE = """
local function parse(v)
  if not v then return false, 0, 0, false end
  local a = string.find(v, ':', 1, true)
  local b = a and string.find(v, ':', a + 1, true)
  if not b then return true, 0, 0, false end
  local rank = tonumber(string.sub(v, 1, a - 1)) or 0
  return true, rank, tonumber(string.sub(v, a + 1, b - 1)) or 0, b < #v
end
"""

# Write-through: ARGV rank, body, ttl_ms. Never replaces a higher rank; bumps gen.
_PUT = (
    _PARSE
    + """
local exists, rank, gen = parse(redis.call('GET', KEYS[1]))
if exists and rank > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. (gen + 1) .. ':' .. ARGV[2], 'PX', ARGV[3])
return 1
"""
)

# Invalidation: ARGV ttl_ms. A tombstone that keeps the rank and bumps gen.
_INVALIDATE = (
    _PARSE
    + """
local exists, rank, gen = parse(redis.call('GET', KEYS[1]))
redis.call('SET', KEYS[1], rank .. ':' .. (gen + 1) .. ':', 'PX', ARGV[1])
return gen + 1
"""
)

# Read-through fill: ARGV token, rank, body, ttl_ms. Only if the key is as the reader saw it:
# token "-" = absent, otherwise the generation of the tombstone it saw.
_FILL = (
    _PARSE
    + """
local exists, rank, gen, body = parse(redis.call('GET', KEYS[1]))
if body then return 0 end
local seen = '-'
if exists then seen = tostring(gen) end
if seen ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2] .. ':' .. gen .. ':' .. ARGV[3], 'PX', ARGV[4])
return 1
"""
)

# A counter that was lost (eviction, restart) restarts at "now", never at an old version.
_BUMP_VERSION = """
local v = redis.call('INCR', KEYS[1])
if v == 1 then v = redis.call('INCRBY', KEYS[1], ARGV[1]) end
return v
"""


class Kind(enum.StrEnum):
    """What a key holds; the ``<kind>`` part of the key and the unit of the counters."""

    job = "job"
    result = "result"
    history = "history"
    media = "media"


class TtlPolicy(enum.StrEnum):
    job_running = "job_running"
    job_finished = "job_finished"
    result = "result"
    history_page = "history_page"
    media = "media"


@dataclass(frozen=True)
class Placement:
    """How a value is stored: its TTL policy and its rank (higher rank wins a write race)."""

    policy: TtlPolicy
    rank: int = 0


RESULT_PLACEMENT: Final = Placement(TtlPolicy.result)
HISTORY_PLACEMENT: Final = Placement(TtlPolicy.history_page)
MEDIA_PLACEMENT: Final = Placement(TtlPolicy.media)
_KIND_POLICIES: Final = {
    Kind.job: (TtlPolicy.job_running, TtlPolicy.job_finished),
    Kind.result: (TtlPolicy.result,),
    Kind.history: (TtlPolicy.history_page,),
    Kind.media: (TtlPolicy.media,),
}


def job_placement(job: JobOut) -> Placement:
    """queued < running < finished; a finished job keeps the long TTL."""
    if job.status.finished:
        return Placement(TtlPolicy.job_finished, rank=2)
    return Placement(TtlPolicy.job_running, rank=1 if job.status is JobStatus.running else 0)


def cache_key(kind: Kind, ident: str) -> str:
    return f"{PREFIX}:{kind.value}:{ident}"


def history_digest(limit: int, cursor: str | None, filters: HistoryFilter | None) -> str:
    """A stable hash of everything that selects one history page."""
    spec = {
        "limit": limit,
        "cursor": cursor,
        "filters": (filters or HistoryFilter()).model_dump(mode="json"),
    }
    return hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def history_key(version: int, digest: str) -> str:
    return f"{PREFIX}:history:{version}:{digest}"


def ttl_seconds(settings: CacheSettings, policy: TtlPolicy) -> float:
    return {
        TtlPolicy.job_running: settings.ttl_job_running_s,
        TtlPolicy.job_finished: settings.ttl_job_finished_s,
        TtlPolicy.result: settings.ttl_result_s,
        TtlPolicy.history_page: settings.ttl_history_page_s,
        TtlPolicy.media: settings.ttl_media_s,
    }[policy]


def ttl_range_ms(settings: CacheSettings, policy: TtlPolicy) -> tuple[int, int]:
    """Inclusive bounds of the jittered TTL, in milliseconds."""
    base = ttl_seconds(settings, policy) * 1000
    return max(1, int(base * (1 - settings.jitter))), max(1, int(base * (1 + settings.jitter)))


def jittered_ttl_ms(settings: CacheSettings, policy: TtlPolicy, rng: random.Random) -> int:
    low, high = ttl_range_ms(settings, policy)
    return rng.randint(low, high)


ABSENT: Final = "-"


@dataclass(frozen=True)
class Envelope:
    rank: int
    gen: int
    body: bytes  # empty for a tombstone


def parse_envelope(raw: bytes) -> Envelope:
    parts = raw.split(b":", 2)
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        raise ValueError("not a cache envelope")
    return Envelope(int(parts[0]), int(parts[1]), parts[2])


def encode_body(value: BaseModel) -> bytes:
    return orjson.dumps(value.model_dump())


def decode(raw: bytes, model: type[M]) -> M:
    """The value in a stored envelope; ``ValueError`` for a tombstone or garbage."""
    body = parse_envelope(raw).body
    if not body:
        raise ValueError("tombstone")
    return model.model_validate_json(body)


def _decode_hit(raw: bytes, model: type[M]) -> M | None:
    """The value of a well-formed, non-empty envelope; None for anything else (the slow path
    then reads the key again and deals with tombstones and garbage)."""
    first = raw.find(b":")
    second = raw.find(b":", first + 1) if first > 0 else -1
    if second < 0 or second + 1 == len(raw):
        return None
    if not (raw[:first].isdigit() and raw[first + 1 : second].isdigit()):
        return None
    try:
        return model.model_validate_json(raw[second + 1 :])
    except ValidationError:
        return None


@dataclass
class KindStats:
    """``hits``/``misses`` count Redis lookups, ``loads`` calls of the loader;
    ``coalesced`` reads joined a lookup already in flight; ``bypassed`` skipped Redis
    (breaker open or cache disabled); ``errors`` are failed Redis calls or bad entries."""

    hits: int = 0
    misses: int = 0
    loads: int = 0
    coalesced: int = 0
    bypassed: int = 0
    errors: int = 0
    writes: int = 0
    invalidations: int = 0


# The snapshot's own spelling of the breaker's states, kept for its readers.
_SNAPSHOT_BREAKER_STATE: Final = {
    BreakerState.closed: "closed",
    BreakerState.half_open: "half-opened",
    BreakerState.open: "opened",
}


@dataclass
class CacheStats:
    """Plain in-process counters; the metrics exporter reads ``snapshot()``."""

    enabled: bool
    breaker: Breaker
    kinds: dict[Kind, KindStats] = field(default_factory=lambda: {k: KindStats() for k in Kind})
    errors_other: int = 0

    @property
    def breaker_state(self) -> str:
        return _SNAPSHOT_BREAKER_STATE[self.breaker.state]

    @property
    def breaker_opened_total(self) -> int:
        return self.breaker.opened_total

    def snapshot(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "breaker": {"state": self.breaker_state, "opened_total": self.breaker_opened_total},
            "errors_other": self.errors_other,
            "kinds": {kind.value: asdict(stats) for kind, stats in self.kinds.items()},
        }


class _Failed(enum.Enum):
    FAILED = "failed"


FAILED: Final = _Failed.FAILED


class _Flight:
    """One in-progress lookup that concurrent readers of the same key share."""

    __slots__ = ("stale", "task")

    def __init__(self) -> None:
        self.stale = False
        self.task: asyncio.Task[Any] | None = None


def make_client(settings: RedisSettings, url: str) -> Redis:
    """A pooled asyncio client with short timeouts and no redis-py retries.

    redis-py's default client retries 3 times with backoff; here one failure is final so a
    dead Redis costs one timeout and then the breaker takes over.
    """
    if settings.tls and url.startswith("redis://"):
        url = "rediss://" + url.removeprefix("redis://")
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.max_connections,
        timeout=settings.op_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.connect_timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    if settings.password is not None:  # the URL's own password would win in from_url
        pool.connection_kwargs["password"] = settings.password.get_secret_value()
    return Redis.from_pool(pool)


class RedisCache:
    """Read-through cache with single-flight, TTL policies and a circuit breaker.

    With ``url=None`` (or ``CacheSettings.enabled=False``) it is a pass-through that still
    coalesces concurrent loads.
    """

    def __init__(self, settings: Settings, url: str | None) -> None:
        self._settings = settings.cache
        self._op_timeout = settings.redis.op_timeout_s
        self._rng = random.Random()
        self._flights: dict[str, _Flight] = {}
        self._gets: dict[str, asyncio.Future[object]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dirty: dict[str, float] = {}
        self._history_dirty_until = 0.0
        self.breaker = Breaker(
            BREAKER_NAME,
            threshold=settings.cache.breaker_failure_threshold,
            recovery_s=settings.cache.breaker_recovery_s,
            single_probe=True,
            on_change=self._on_breaker_change,
        )
        self._client: Redis | None = None
        if url is None or not settings.cache.enabled:
            why = "no Redis URL configured" if url is None else "MA_CACHE_ENABLED=false"
            log.info("cache disabled (%s): every read goes to PostgreSQL", why)
        else:
            self._client = make_client(settings.redis, url)
            self._put_script = self._client.register_script(_PUT)
            self._fill_script = self._client.register_script(_FILL)
            self._invalidate_script = self._client.register_script(_INVALIDATE)
            self._bump_version = self._client.register_script(_BUMP_VERSION)
        self.stats = CacheStats(enabled=self._client is not None, breaker=self.breaker)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisCache:
        url = settings.redis.url.get_secret_value() if settings.redis.url else None
        return cls(settings, url)

    @property
    def enabled(self) -> bool:
        return self._client is not None

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
        if self._client is not None and key not in self._flights and key not in self._dirty:
            raw = await self._shared_get(kind, key)
            if raw is FAILED:
                redis_ok = False  # one timeout per read, not two: the load skips Redis
            elif raw is not None:
                value = _decode_hit(cast(bytes, raw), model)
                if value is not None:
                    self.stats.kinds[kind].hits += 1
                    return value

        async def lookup(flight: _Flight) -> M | None:
            # a miss looks again inside the flight: a reader whose GET missed just before
            # another flight filled the key then finds the value instead of loading again
            usable = redis_ok and await self._repair(kind, key)
            return await self._read_through(flight, kind, key, model, loader, placement, usable)

        return await self._single_flight(key, kind, lookup)

    async def _shared_get(self, kind: Kind, key: str) -> object:
        """One GET of ``key`` at a time in this process: readers that arrive while it is in
        flight share its reply (a hot or cold key costs Redis one GET, not one per reader).
        The first reader does the GET itself (no task); if it is cancelled the others see a
        miss and look again inside the single-flight."""
        pending = self._gets.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        shared: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._gets[key] = shared
        raw: object = None
        try:
            raw = await self._call(kind, lambda c: c.get(key))
        finally:
            if self._gets.get(key) is shared:  # a write may have detached it already
                del self._gets[key]
            shared.set_result(raw)
        return raw

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

        async def lookup(flight: _Flight) -> HistoryPage | None:
            version: int | None = None
            if await self._repair_history():
                raw = await self._call(Kind.history, lambda c: c.get(HISTORY_VERSION_KEY))
                version = _version(raw)
            key = history_key(version or 0, digest)
            usable = version is not None
            return await self._read_through(
                flight, Kind.history, key, HistoryPage, loader, _history_placement, usable
            )

        page = await self._single_flight(f"{PREFIX}:history:flight:{digest}", Kind.history, lookup)
        assert page is not None  # a history loader always returns a page
        return page

    async def _read_through(
        self,
        flight: _Flight,
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
            raw = await self._call(kind, lambda c: c.get(key))
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
        elif self._client is None:
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
        await self._call(
            kind, lambda c: self._fill_script(keys=[key], args=[token, where.rank, body, ttl])
        )

    async def _single_flight(
        self,
        key: str,
        kind: Kind,
        work: Callable[[_Flight], Coroutine[Any, Any, T]],
    ) -> T:
        flight = self._flights.get(key)
        if flight is not None and flight.task is not None:
            self.stats.kinds[kind].coalesced += 1
            return cast(T, await asyncio.shield(flight.task))
        flight = _Flight()
        task = asyncio.create_task(work(flight))
        flight.task = task
        self._flights[key] = flight

        def done(finished: asyncio.Task[Any], key: str = key, flight: _Flight = flight) -> None:
            if self._flights.get(key) is flight:
                del self._flights[key]
            if not finished.cancelled():
                finished.exception()  # retrieved: every waiter may have been cancelled

        task.add_done_callback(done)
        return await asyncio.shield(task)

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
            if self._client is None:
                return
            try:
                body = encode_body(value)
            except orjson.JSONEncodeError:
                self.stats.kinds[kind].errors += 1
                self._after_write(kind, key, await self._tombstone(kind, key), "invalidations")
                return
            ttl = jittered_ttl_ms(self._settings, where.policy, self._rng)
            done = await self._call(
                kind, lambda c: self._put_script(keys=[key], args=[where.rank, body, ttl])
            )
            self._after_write(kind, key, done is not FAILED, "writes")
        finally:
            self._detach(key)

    async def _invalidate(self, kind: Kind, key: str) -> None:
        try:
            if self._client is not None:
                self._after_write(kind, key, await self._tombstone(kind, key), "invalidations")
        finally:
            self._detach(key)

    async def _tombstone(self, kind: Kind, key: str) -> bool:
        """Replace the value by a tombstone that outlives any entry the key could hold."""
        ttl = int(self._max_ttl_s(kind) * 1000)
        done = await self._call(kind, lambda c: self._invalidate_script(keys=[key], args=[ttl]))
        return done is not FAILED

    async def _bump_history(self) -> None:
        try:
            if self._client is not None and not await self._bump_version_once():
                self._history_dirty_until = time.monotonic() + self._max_ttl_s(Kind.history)
        finally:
            for key in [k for k in self._flights if k.startswith(f"{PREFIX}:history:")]:
                self._detach(key)

    async def _bump_version_once(self) -> bool:
        now_us = time.time_ns() // 1000
        done = await self._call(
            Kind.history, lambda c: self._bump_version(keys=[HISTORY_VERSION_KEY], args=[now_us])
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
            self._dirty.pop(key, None)
            stats = self.stats.kinds[kind]
            setattr(stats, counter, getattr(stats, counter) + 1)
            return
        self._dirty.pop(key, None)  # re-insert at the end: the dict stays ordered by age
        self._dirty[key] = time.monotonic() + self._max_ttl_s(kind)
        if len(self._dirty) > MAX_DIRTY_KEYS:
            oldest = next(iter(self._dirty))
            del self._dirty[oldest]
            log.warning("too many unsynced cache keys; %s may be stale until its TTL", oldest)

    def _detach(self, key: str) -> None:
        """Readers arriving after this write must not join a lookup that began before it."""
        self._gets.pop(key, None)
        flight = self._flights.pop(key, None)
        if flight is not None:
            flight.stale = True

    async def _repair(self, kind: Kind, key: str) -> bool:
        """False while a write to ``key`` has not reached Redis (read PostgreSQL instead)."""
        if self._client is None:
            return False
        until = self._dirty.get(key)
        if until is None:
            return True
        if time.monotonic() < until and not await self._tombstone(kind, key):
            return False
        self._dirty.pop(key, None)
        return True

    async def _repair_history(self) -> bool:
        if self._client is None:
            return False
        if self._history_dirty_until and time.monotonic() < self._history_dirty_until:
            return await self._bump_version_once()
        self._history_dirty_until = 0.0
        return True

    def _max_ttl_s(self, kind: Kind) -> float:
        longest = max(ttl_seconds(self._settings, p) for p in _KIND_POLICIES[kind])
        return longest * (1 + self._settings.jitter) + 1

    async def _shielded(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a post-commit cache update to completion even if the caller is cancelled."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    # ---- Redis calls behind the breaker --------------------------------------------------

    async def _call(
        self, kind: Kind | None, op: Callable[[Redis], Awaitable[T]]
    ) -> T | Literal[_Failed.FAILED]:
        """Run one Redis call with a hard deadline; FAILED instead of any error. While the
        breaker is open (or its one probe is running) the call is skipped without raising."""
        client = self._client
        if client is None:
            return FAILED
        attempt = self.breaker.attempt()
        if attempt is None:
            self._count(kind, "bypassed")
            return FAILED
        try:
            with attempt:
                async with asyncio.timeout(self._op_timeout):
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
                self._settings.breaker_recovery_s,
            )
        elif after is BreakerState.closed:
            log.info("Redis circuit breaker closed: cache back in use")

    # ---- health --------------------------------------------------------------------------

    async def ping(self) -> bool:
        """True when Redis answers; goes through the breaker, so it doubles as a probe."""
        return await self._call(None, lambda c: c.ping()) is not FAILED

    @property
    def state(self) -> CacheState:
        """``ok``: in use and healthy; ``degraded``: recent errors or probing; ``down``:
        breaker open or cache disabled (see ``enabled``). Redis never gates readiness."""
        if self._client is None:
            return "down"
        gate = self.breaker.gate()
        if gate == "open":
            return "down"
        if gate == "probe":
            return "degraded"
        return "degraded" if self.breaker.failure_count else "ok"

    async def close(self) -> None:
        """Finish pending write-throughs (each bounded by the deadline), then disconnect."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self._op_timeout * 3)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _history_placement(_: HistoryPage) -> Placement:
    return HISTORY_PLACEMENT


def _version(raw: object) -> int | None:
    """The history version from a GET; None when Redis failed or holds garbage."""
    if raw is None:
        return 0
    if isinstance(raw, bytes) and raw.isdigit():
        return int(raw)
    if raw is not FAILED:
        log.warning("ignoring malformed %s: %r", HISTORY_VERSION_KEY, raw)
    return None
