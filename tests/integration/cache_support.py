"""What the Redis cache tests share: settings with explicit TTLs, and the raw bytes of an
entry as the cache wrote them (no tests here; the fixtures are in conftest.py)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from app_patch.settings import CacheSettings, RedisSettings, Settings


def make_settings(**cache: Any) -> Settings:
    """Explicit TTLs per kind (all different) with 20% jitter; overrides go to CacheSettings."""
    redis_keys = {"socket_timeout_s", "connect_timeout_s", "op_timeout_s", "password"}
    redis = {k: cache.pop(k) for k in list(cache) if k in redis_keys}
    values: dict[str, Any] = {
        "ttl_job_running_s": 5,
        "ttl_job_finished_s": 60,
        "ttl_result_s": 120,
        "ttl_history_page_s": 30,
        "ttl_media_s": 90,
        "jitter": 0.2,
        "breaker_failure_threshold": 2,
        "breaker_recovery_s": 0.5,
    }
    values.update(cache)
    return Settings(redis=RedisSettings(**redis), cache=CacheSettings(**values))


async def stored(raw: Redis, key: str) -> bytes:
    """The bytes under ``key`` (the raw client does not decode responses)."""
    value = await raw.get(key)
    assert isinstance(value, bytes), f"{key}: {value!r}"
    return value
