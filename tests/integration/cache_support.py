"""What the Redis cache tests share: settings with explicit TTLs, the raw bytes of an entry as
the cache wrote them, and a media row to look up (no tests here; the fixtures are in
conftest.py)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch.models import MediaFile
from app_patch.settings import CacheSettings, RedisSettings, Settings

Sessions = async_sessionmaker[AsyncSession]


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


async def insert_media(sessions: Sessions, sha256: str, size: int = 10) -> None:
    async with sessions.begin() as session:
        session.add(
            MediaFile(
                sha256=sha256,
                size_bytes=size,
                content_type="image/png",
                original_name="a.png",
                storage_key=f"uploads/{sha256}",
            )
        )
