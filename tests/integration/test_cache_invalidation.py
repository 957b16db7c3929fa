"""Cache invalidation against a real Redis and a real PostgreSQL: history pages are fresh
after every write (the version key), media and results are cached until invalidated, and
invalidating a job leaves tombstones."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch.cache import HISTORY_VERSION_KEY, Kind, RedisCache, cache_key, decode, parse_envelope
from app_patch.media_lookup import MediaLookup
from app_patch.models import JobStatus, MediaFile
from app_patch.repository import NewJob
from app_patch.schemas import HistoryFilter, InvalidCursorError, JobOut, MediaOut
from app_patch.service import HistoryService
from tests.integration.cache_support import insert_media, stored
from tests.integration.history_data import a_result

pytestmark = pytest.mark.usefixtures("clean_db")

Sessions = async_sessionmaker[AsyncSession]


async def test_history_is_fresh_after_every_write_and_cached_between(
    service: HistoryService, cache: RedisCache, raw: Redis
) -> None:
    jobs = [(await service.create_job(NewJob(analysis_type="basic")))[0] for _ in range(3)]
    page = await service.list_history(limit=10)
    assert [j.id for j in page.items] == [j.id for j in reversed(jobs)]
    hits = cache.stats.kinds[Kind.history].hits
    assert await service.list_history(limit=10) == page
    assert cache.stats.kinds[Kind.history].hits == hits + 1

    version = int(await stored(raw, HISTORY_VERSION_KEY))
    newest, _ = await service.create_job(NewJob(analysis_type="basic"))
    assert int(await stored(raw, HISTORY_VERSION_KEY)) > version
    page = await service.list_history(limit=10)
    assert page.items[0].id == newest.id and len(page.items) == 4

    succeeded = HistoryFilter(status=JobStatus.succeeded)
    assert (await service.list_history(limit=10, filters=succeeded)).items == []
    await service.mark_succeeded(jobs[0].id, a_result())
    done = await service.list_history(limit=10, filters=succeeded)
    assert [j.id for j in done.items] == [jobs[0].id]
    assert (await service.list_history(limit=10)).items[-1].status is JobStatus.succeeded

    first = await service.list_history(limit=3)
    assert first.next_cursor is not None
    second = await service.list_history(limit=3, cursor=first.next_cursor)
    assert [j.id for j in second.items] == [jobs[0].id]
    assert await service.list_history(limit=3, cursor=first.next_cursor) == second


async def test_malformed_cursor_is_rejected_before_any_lookup(
    service: HistoryService, cache: RedisCache
) -> None:
    with pytest.raises(InvalidCursorError):
        await service.list_history(cursor="nonsense")
    stats = cache.stats.kinds[Kind.history]
    assert (stats.hits, stats.misses, stats.loads) == (0, 0, 0)


async def test_media_by_sha256_is_cached_until_invalidated(
    media_lookup: MediaLookup, session_factory: Sessions
) -> None:
    sha = "ab" * 32
    assert await media_lookup.get(sha) is None
    await insert_media(session_factory, sha, size=10)
    media = await media_lookup.get(sha.upper())
    assert isinstance(media, MediaOut) and media.size_bytes == 10 and media.sha256 == sha

    async with session_factory.begin() as session:
        await session.execute(
            update(MediaFile).where(MediaFile.sha256 == sha).values(size_bytes=11)
        )
    assert (await media_lookup.get(sha)) == media  # served from Redis
    await media_lookup.invalidate(sha)
    fresh = await media_lookup.get(sha)
    assert fresh is not None and fresh.size_bytes == 11

    async with session_factory.begin() as session:
        await session.execute(text("UPDATE media_files SET deleted_at = now()"))
    await media_lookup.invalidate(sha)
    assert await media_lookup.get(sha) is None


async def test_get_result_is_cached_after_success(
    service: HistoryService, cache: RedisCache
) -> None:
    job, _ = await service.create_job(NewJob(analysis_type="basic"))
    assert await service.get_result(job.id) is None
    done = await service.mark_succeeded(job.id, a_result(width=4))
    loads = cache.stats.kinds[Kind.result].loads
    result = await service.get_result(job.id)
    assert result is not None and result == done.result and result.result["width"] == 4
    assert cache.stats.kinds[Kind.result].loads == loads  # written through, not loaded


async def test_invalidate_job_forgets_job_result_and_history(
    service: HistoryService, raw: Redis
) -> None:
    job, _ = await service.create_job(NewJob(analysis_type="basic"))
    await service.mark_succeeded(job.id, a_result())
    version = int(await stored(raw, HISTORY_VERSION_KEY))
    await service.invalidate_job(job.id)
    for key in cache_key(Kind.job, str(job.id)), cache_key(Kind.result, str(job.id)):
        assert parse_envelope(await stored(raw, key)).body == b"", "a tombstone, not a value"
    assert int(await stored(raw, HISTORY_VERSION_KEY)) > version
    again = await service.get_job(job.id)  # a miss on the tombstone reloads and refills
    assert again is not None and again.status is JobStatus.succeeded
    assert decode(await stored(raw, cache_key(Kind.job, str(job.id))), JobOut) == again


async def test_idempotent_create_returns_existing_without_cache_writes(
    service: HistoryService, cache: RedisCache
) -> None:
    first, created = await service.create_job(NewJob(analysis_type="basic", idempotency_key="k"))
    writes = cache.stats.kinds[Kind.job].writes
    again, created_again = await service.create_job(
        NewJob(analysis_type="basic", idempotency_key="k")
    )
    assert (created, created_again) == (True, False) and again.id == first.id
    assert cache.stats.kinds[Kind.job].writes == writes
