"""Single-flight and freshness under concurrency, against a real Redis and a real PostgreSQL:
concurrent cold reads load once, and no load that read before a commit can serve or store the
state the commit replaced."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app_patch import repository as repo
from app_patch.cache import Kind, RedisCache, cache_key, decode, job_placement, parse_envelope
from app_patch.models import JobStatus
from app_patch.repository import NewJob
from app_patch.schemas import JobOut
from app_patch.service import HistoryService
from tests.integration.cache_support import make_settings, stored
from tests.integration.history_data import a_result, insert_job

pytestmark = pytest.mark.usefixtures("clean_db")

Sessions = async_sessionmaker[AsyncSession]


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
