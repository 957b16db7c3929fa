"""What the cache reports about itself: health and stats of a working one, and without Redis
a logged pass-through that still serves every read from PostgreSQL."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch.cache import RedisCache
from app_patch.media_lookup import MediaLookup
from app_patch.models import JobStatus
from app_patch.repository import NewJob
from app_patch.service import HistoryService
from tests.integration.cache_support import make_settings
from tests.integration.history_data import a_result

pytestmark = pytest.mark.usefixtures("clean_db")

Sessions = async_sessionmaker[AsyncSession]


async def test_health_and_stats_of_a_working_cache(
    cache: RedisCache, service: HistoryService
) -> None:
    assert await cache.ping() is True
    assert cache.state == "ok" and cache.enabled
    job, _ = await service.create_job(NewJob(analysis_type="basic"))
    await service.get_job(job.id)
    snap = cache.stats.snapshot()
    assert snap["enabled"] is True
    assert snap["breaker"] == {"state": "closed", "opened_total": 0}
    assert set(snap["kinds"]) == {"job", "result", "history", "media"}
    assert snap["kinds"]["job"]["hits"] == 1 and snap["kinds"]["job"]["writes"] == 1


async def test_without_redis_the_cache_is_a_logged_pass_through(
    session_factory: Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="app_patch.cache"):
        cache = RedisCache(make_settings(), None)
    try:
        service = HistoryService(session_factory, cache)
        media = MediaLookup(session_factory, cache)
        job, _ = await service.create_job(NewJob(analysis_type="basic"))
        await service.mark_succeeded(job.id, a_result())
        reads = await asyncio.gather(*(service.get_job(job.id) for _ in range(20)))
        assert all(r is not None and r.status is JobStatus.succeeded for r in reads)
        assert [j.id for j in (await service.list_history()).items] == [job.id]
        assert await media.get("00" * 32) is None
        assert await cache.ping() is False
        assert (cache.enabled, cache.state) == (False, "down")
        assert cache.stats.snapshot()["kinds"]["job"]["bypassed"] >= 1
    finally:
        await cache.close()
    disabled = [r for r in caplog.records if "cache disabled" in r.getMessage()]
    assert len(disabled) == 1
