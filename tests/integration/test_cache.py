"""The Redis cache against a real Redis and a real PostgreSQL: TTLs, single-flight, freshness."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import event, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app_patch import repository as repo
from app_patch.cache import (
    HISTORY_VERSION_KEY,
    Kind,
    Placement,
    RedisCache,
    TtlPolicy,
    cache_key,
    decode,
    job_placement,
    parse_envelope,
    ttl_range_ms,
)
from app_patch.media_lookup import MediaLookup
from app_patch.models import JobStatus, MediaFile
from app_patch.repository import NewJob
from app_patch.schemas import HistoryFilter, InvalidCursorError, JobOut, MediaOut
from app_patch.service import HistoryService
from app_patch.settings import CacheSettings
from tests.integration.cache_support import make_settings, stored
from tests.integration.history_data import a_result, insert_job

pytestmark = pytest.mark.usefixtures("clean_db")

Sessions = async_sessionmaker[AsyncSession]


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


@dataclass
class HeldLoad:
    """A load of one job from PostgreSQL that, once it has read, waits to be released."""

    sessions: Sessions
    job_id: uuid.UUID
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self) -> JobOut | None:
        async with self.sessions() as session:
            state = await repo.get_job(session, self.job_id)
        self.loaded.set()
        await self.release.wait()
        return state


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


async def test_100_concurrent_cold_reads_load_once(
    cache: RedisCache, session_factory: Sessions
) -> None:
    job = await insert_job(session_factory)
    loads = 0

    async def loader() -> JobOut | None:
        nonlocal loads
        loads += 1
        async with session_factory() as session:
            return await repo.get_job(session, job.id)

    async def read() -> JobOut | None:
        return await cache.get_or_load(Kind.job, str(job.id), JobOut, loader, job_placement)

    first = await asyncio.gather(*(read() for _ in range(100)))
    assert loads == 1
    assert all(got == job for got in first)
    stats = cache.stats.kinds[Kind.job]
    assert (stats.misses, stats.coalesced, stats.loads) == (1, 99, 1)

    again = await asyncio.gather(*(read() for _ in range(100)))
    assert loads == 1, "warm reads must not load again"
    assert all(got == job for got in again)
    assert stats.hits >= 1


@pytest.fixture
def job_selects(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every SELECT on analysis_jobs that the shared engine sends to PostgreSQL."""
    seen: list[str] = []

    def listener(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM analysis_jobs" in statement:
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", listener)
    yield seen
    event.remove(engine.sync_engine, "before_cursor_execute", listener)


async def test_service_cold_reads_query_postgres_once(
    service: HistoryService, session_factory: Sessions, job_selects: list[str]
) -> None:
    job = await insert_job(session_factory)
    job_selects.clear()
    results = await asyncio.gather(*(service.get_job(job.id) for _ in range(100)))
    assert {r.id for r in results if r is not None} == {job.id} and None not in results
    assert len(job_selects) == 1

    pages = await asyncio.gather(*(service.list_history(limit=10) for _ in range(100)))
    assert all(p == pages[0] for p in pages)
    assert len(job_selects) == 2


@pytest.fixture
async def other_process(redis_url: str, raw: Redis) -> AsyncIterator[RedisCache]:
    """A second cache on the same Redis, standing in for another API process."""
    cache = RedisCache(make_settings(), redis_url)
    yield cache
    await cache.close()


async def finish_under_readers(
    service: HistoryService, other_process: RedisCache, rng: random.Random
) -> tuple[uuid.UUID, int, list[JobStatus]]:
    """One round: 10 readers poll a running job while it succeeds.

    Returns the job id, how many reads started after ``mark_succeeded`` returned, and the
    statuses of those reads that were not "succeeded" (must be none).
    """
    job, _ = await service.create_job(NewJob(analysis_type="basic"))
    await service.mark_running(job.id)
    written, stop = asyncio.Event(), asyncio.Event()
    stale: list[JobStatus] = []

    async def reader() -> int:
        after = 0
        for _ in range(5000):
            if stop.is_set():
                break
            returned = written.is_set()
            got = await service.get_job(job.id)
            assert got is not None
            if returned:
                after += 1
                if got.status is not JobStatus.succeeded:
                    stale.append(got.status)
            await asyncio.sleep(0)
        return after

    async def invalidator() -> int:
        for _ in range(5000):
            if stop.is_set():
                break
            await other_process.invalidate(Kind.job, str(job.id))
            await asyncio.sleep(rng.random() / 1000)
        return 0

    async def writer() -> int:
        await asyncio.sleep(rng.random() / 100)
        await service.mark_succeeded(job.id, a_result())
        written.set()
        await asyncio.sleep(0.02)
        stop.set()
        return 0

    counts = await asyncio.gather(*(reader() for _ in range(10)), invalidator(), writer())
    return job.id, sum(counts), stale


async def test_reads_after_mark_succeeded_never_return_running(
    service: HistoryService, raw: Redis, other_process: RedisCache
) -> None:
    """Readers hammer one job while it finishes; another process keeps invalidating the
    key so that reads keep loading from PostgreSQL around the commit."""
    rng = random.Random(7)
    post_write_reads = 0
    for _ in range(25):
        job_id, after, stale = await finish_under_readers(service, other_process, rng)
        assert stale == [], f"read {stale[0]} after mark_succeeded returned"
        post_write_reads += after
        cached = await raw.get(cache_key(Kind.job, str(job_id)))
        if isinstance(cached, bytes) and parse_envelope(cached).body:
            assert decode(cached, JobOut).status is JobStatus.succeeded
    assert post_write_reads > 250


@pytest.mark.parametrize("invalidated_between", [False, True], ids=["plain", "invalidated"])
async def test_a_load_from_before_the_commit_cannot_overwrite_the_finished_state(
    service: HistoryService,
    session_factory: Sessions,
    redis_url: str,
    raw: Redis,
    invalidated_between: bool,
) -> None:
    """Another process read "running" from PostgreSQL before the commit and fills late,
    possibly after the key was also invalidated (so it is no longer holding a value)."""
    job, _ = await service.create_job(NewJob(analysis_type="basic"))
    await service.mark_running(job.id)
    key = cache_key(Kind.job, str(job.id))
    await raw.delete(key)
    other_process = RedisCache(make_settings(), redis_url)
    held = HeldLoad(session_factory, job.id)

    try:
        late = asyncio.create_task(
            other_process.get_or_load(Kind.job, str(job.id), JobOut, held, job_placement)
        )
        await asyncio.wait_for(held.loaded.wait(), 5)
        await service.mark_succeeded(job.id, a_result())
        if invalidated_between:
            await service.cache.invalidate(Kind.job, str(job.id))
        held.release.set()
        late_state = await late  # it was a concurrent read
        assert late_state is not None and late_state.status is JobStatus.running
    finally:
        held.release.set()
        await other_process.close()
    if invalidated_between:
        assert parse_envelope(await stored(raw, key)).body == b"", "the late fill was refused"
    else:
        assert decode(await stored(raw, key), JobOut).status is JobStatus.succeeded
    got = await service.get_job(job.id)
    assert got is not None and got.status is JobStatus.succeeded


async def test_a_read_after_the_write_does_not_join_a_load_from_before_it(
    service: HistoryService, session_factory: Sessions, raw: Redis
) -> None:
    """Same process: a single-flight still loading the old state must not serve new readers."""
    job, _ = await service.create_job(NewJob(analysis_type="basic"))
    await service.mark_running(job.id)
    key = cache_key(Kind.job, str(job.id))
    await raw.delete(key)
    held = HeldLoad(session_factory, job.id)

    late = asyncio.create_task(
        service.cache.get_or_load(Kind.job, str(job.id), JobOut, held, job_placement)
    )
    try:
        await asyncio.wait_for(held.loaded.wait(), 5)
        await service.mark_succeeded(job.id, a_result())
        after = await asyncio.wait_for(service.get_job(job.id), 5)  # would hang if it joined
        assert after is not None and after.status is JobStatus.succeeded
    finally:
        held.release.set()
    late_state = await late
    assert late_state is not None and late_state.status is JobStatus.running
    assert decode(await stored(raw, key), JobOut).status is JobStatus.succeeded


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
