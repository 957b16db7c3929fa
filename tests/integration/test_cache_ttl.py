"""Every cache entry's TTL against a real Redis and a real PostgreSQL: each kind within its
policy's jittered range, spread by the jitter, and never shortened by a stale write-through."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch.cache import (
    HISTORY_VERSION_KEY,
    Kind,
    Placement,
    RedisCache,
    TtlPolicy,
    cache_key,
    decode,
    job_placement,
    ttl_range_ms,
)
from app_patch.media_lookup import MediaLookup
from app_patch.models import JobStatus
from app_patch.repository import NewJob
from app_patch.schemas import JobOut
from app_patch.service import HistoryService
from app_patch.settings import CacheSettings
from tests.integration.cache_support import insert_media, make_settings, stored
from tests.integration.history_data import a_result, insert_job

pytestmark = pytest.mark.usefixtures("clean_db")

Sessions = async_sessionmaker[AsyncSession]


async def assert_pttl_in_policy(raw: Redis, key: str, settings: CacheSettings, p: TtlPolicy) -> int:
    low, high = ttl_range_ms(settings, p)
    pttl = int(await raw.pttl(key))
    # The lower bound allows for the time between the write and this PTTL (well under 1 s).
    assert low - 1000 <= pttl <= high, f"{key}: PTTL {pttl} outside [{low}, {high}] of {p}"
    return pttl


async def test_every_kind_is_stored_with_a_ttl_in_its_jittered_range(
    service: HistoryService,
    media_lookup: MediaLookup,
    cache: RedisCache,
    raw: Redis,
    session_factory: Sessions,
) -> None:
    cfg = make_settings().cache
    job, created = await service.create_job(NewJob(analysis_type="basic"))
    assert created
    job_key = cache_key(Kind.job, str(job.id))
    await assert_pttl_in_policy(raw, job_key, cfg, TtlPolicy.job_running)  # queued

    await service.mark_running(job.id)
    await raw.delete(job_key)
    assert (await service.get_job(job.id)) is not None  # read-through fill (SET NX)
    await assert_pttl_in_policy(raw, job_key, cfg, TtlPolicy.job_running)

    await service.mark_succeeded(job.id, a_result())
    await assert_pttl_in_policy(raw, job_key, cfg, TtlPolicy.job_finished)
    result_key = cache_key(Kind.result, str(job.id))
    await assert_pttl_in_policy(raw, result_key, cfg, TtlPolicy.result)
    await raw.delete(job_key, result_key)
    assert (await service.get_job(job.id)) is not None
    assert (await service.get_result(job.id)) is not None
    await assert_pttl_in_policy(raw, job_key, cfg, TtlPolicy.job_finished)
    await assert_pttl_in_policy(raw, result_key, cfg, TtlPolicy.result)

    await service.list_history(limit=5)
    pages = [
        k async for k in raw.scan_iter(match="ma:v1:history:*") if k != b"ma:v1:history:version"
    ]
    assert len(pages) == 1
    await assert_pttl_in_policy(raw, pages[0].decode(), cfg, TtlPolicy.history_page)
    assert int(await raw.pttl(HISTORY_VERSION_KEY)) == -1  # the version counter never expires

    sha = "c0" * 32
    await insert_media(session_factory, sha)
    assert (await media_lookup.get(sha)) is not None
    await assert_pttl_in_policy(raw, cache_key(Kind.media, sha), cfg, TtlPolicy.media)


async def test_ttls_are_jittered(service: HistoryService, raw: Redis) -> None:
    cfg = make_settings().cache
    ttls = []
    for _ in range(30):
        job, _ = await service.create_job(NewJob(analysis_type="basic"))
        key = cache_key(Kind.job, str(job.id))
        ttls.append(await assert_pttl_in_policy(raw, key, cfg, TtlPolicy.job_running))
    assert len(set(ttls)) >= 10, "TTLs should be spread by jitter, not identical"
    low, high = ttl_range_ms(cfg, TtlPolicy.job_running)
    assert min(ttls) < (low + high) / 2 < max(ttls)


async def test_ranked_write_through_never_downgrades(
    cache: RedisCache, session_factory: Sessions, raw: Redis
) -> None:
    """A delayed "running" write-through arriving after the finished one is ignored."""
    job = await insert_job(session_factory)
    running = job.model_copy(update={"status": JobStatus.running})
    finished = job.model_copy(update={"status": JobStatus.succeeded})
    key = cache_key(Kind.job, str(job.id))

    await cache.put(Kind.job, str(job.id), running, job_placement(running))
    await cache.put(Kind.job, str(job.id), finished, job_placement(finished))
    await cache.put(Kind.job, str(job.id), running, job_placement(running))
    await cache.put(Kind.job, str(job.id), job, job_placement(job))  # queued
    assert decode(await stored(raw, key), JobOut).status is JobStatus.succeeded
    low, _ = ttl_range_ms(make_settings().cache, TtlPolicy.job_finished)
    assert int(await raw.pttl(key)) >= low - 1000

    same_rank = finished.model_copy(update={"error": "rewritten"})
    await cache.put(Kind.job, str(job.id), same_rank, Placement(TtlPolicy.job_finished, 2))
    assert decode(await stored(raw, key), JobOut).error == "rewritten"
