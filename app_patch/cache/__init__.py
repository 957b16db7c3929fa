"""Redis read-through cache for the history; Redis is never the source of truth.

One job per module: ``keys`` (key names, kinds, TTL policy), ``envelope`` (the stored
value), ``client`` (the client factory and every command sent, Lua scripts included),
``flights`` (shared GETs and single-flight), ``dirty`` (keys whose write did not reach
Redis), ``stats`` (counters), ``guarded`` (Redis calls behind the breaker and a deadline),
``redis_cache`` (``RedisCache``, which ties them together).

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
"""

from app_patch.cache.client import make_client
from app_patch.cache.dirty import MAX_DIRTY_KEYS
from app_patch.cache.envelope import ABSENT, Envelope, decode, encode_body, parse_envelope
from app_patch.cache.guarded import BREAKER_NAME, FAILED, CacheState
from app_patch.cache.keys import (
    HISTORY_PLACEMENT,
    HISTORY_VERSION_KEY,
    MEDIA_PLACEMENT,
    PREFIX,
    RESULT_PLACEMENT,
    Kind,
    Placement,
    TtlPolicy,
    cache_key,
    history_digest,
    history_key,
    jittered_ttl_ms,
    job_placement,
    ttl_range_ms,
    ttl_seconds,
)
from app_patch.cache.redis_cache import RedisCache
from app_patch.cache.stats import CacheStats, KindStats

__all__ = [
    "ABSENT",
    "BREAKER_NAME",
    "FAILED",
    "HISTORY_PLACEMENT",
    "HISTORY_VERSION_KEY",
    "MAX_DIRTY_KEYS",
    "MEDIA_PLACEMENT",
    "PREFIX",
    "RESULT_PLACEMENT",
    "CacheState",
    "CacheStats",
    "Envelope",
    "Kind",
    "KindStats",
    "Placement",
    "RedisCache",
    "TtlPolicy",
    "cache_key",
    "decode",
    "encode_body",
    "history_digest",
    "history_key",
    "jittered_ttl_ms",
    "job_placement",
    "make_client",
    "parse_envelope",
    "ttl_range_ms",
    "ttl_seconds",
]
