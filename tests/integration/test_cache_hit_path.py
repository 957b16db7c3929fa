"""The cache-hit fast path: a hit is one GET and one decode; everything else is unchanged.

Misses, tombstones, garbage and Redis failures still take the single-flight read-through (one
load per key, one failed call per read), so these tests pin what the fast path must not skip.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch import repository as repo
from app_patch.cache import Kind, RedisCache, cache_key, decode, parse_envelope
from app_patch.schemas import JobOut
from app_patch.service import HistoryService
from tests.integration.cache_support import stored
from tests.integration.history_data import a_result, insert_job

pytestmark = pytest.mark.usefixtures("clean_db")

Sessions = async_sessionmaker[AsyncSession]


async def test_hits_of_one_key_start_no_flight_and_never_load(
    service: HistoryService, cache: RedisCache
) -> None:
    job, _ = await service.create_job(repo.NewJob(analysis_type="basic"))
    done = await service.mark_succeeded(job.id, a_result())
    stats = cache.stats.kinds[Kind.job]
    before = (stats.hits, stats.loads, stats.coalesced, stats.misses)

    tasks_before = len(asyncio.all_tasks())
    got = await asyncio.gather(*(service.get_job(job.id) for _ in range(50)))

    assert all(g == done for g in got)
    assert len(asyncio.all_tasks()) == tasks_before, "a hit left a task behind"
    assert (stats.hits, stats.loads, stats.coalesced, stats.misses) == (
        before[0] + 50,
        before[1],
        before[2],
        before[3],
    )


async def test_a_tombstone_is_a_miss_that_loads_once_and_fills(
    service: HistoryService, cache: RedisCache, raw: Redis, session_factory: Sessions
) -> None:
    job = await insert_job(session_factory)
    await cache.invalidate(Kind.job, str(job.id))
    key = cache_key(Kind.job, str(job.id))
    assert parse_envelope(await stored(raw, key)).body == b""
    stats = cache.stats.kinds[Kind.job]

    got = await asyncio.gather(*(service.get_job(job.id) for _ in range(20)))

    assert all(g == job for g in got)
    assert stats.loads == 1, "concurrent misses share one load"
    assert decode(await stored(raw, key), JobOut) == job, "the load filled the tombstone"


@pytest.mark.parametrize(
    "garbage", [b"not an envelope", b"2:7:{not json", b"2:7:{}", b"x:1:{}", b"1:2:"]
)
async def test_garbage_is_never_returned_and_is_repaired_from_postgres(
    service: HistoryService,
    cache: RedisCache,
    raw: Redis,
    session_factory: Sessions,
    garbage: bytes,
) -> None:
    job = await insert_job(session_factory)
    key = cache_key(Kind.job, str(job.id))
    await raw.set(key, garbage, px=60_000)

    assert await service.get_job(job.id) == job
    assert await service.get_job(job.id) == job
    assert cache.stats.kinds[Kind.job].loads >= 1


async def test_a_dirty_key_is_read_from_postgres_not_from_the_old_entry(
    service: HistoryService, cache: RedisCache, raw: Redis, session_factory: Sessions
) -> None:
    """A write-through that did not reach Redis leaves the old value there; the fast path
    must not serve it while the key is dirty."""
    job, _ = await service.create_job(repo.NewJob(analysis_type="basic"))
    running = await service.mark_running(job.id)
    assert await service.get_job(job.id) == running
    key = cache_key(Kind.job, str(job.id))
    stale = await stored(raw, key)
    done = await service.mark_succeeded(job.id, a_result())
    await raw.set(key, stale, px=60_000)  # as if the write-through had been lost...
    cache._after_write(Kind.job, key, False, "writes")  # ...and this process knew it

    got = await service.get_job(job.id)

    assert got == done


async def test_a_read_after_a_write_never_shares_a_get_from_before_it(
    service: HistoryService, cache: RedisCache
) -> None:
    job, _ = await service.create_job(repo.NewJob(analysis_type="basic"))
    key = cache_key(Kind.job, str(job.id))
    early = asyncio.create_task(cache._shared_get(Kind.job, key))
    await asyncio.sleep(0)  # its GET is registered and in flight (the reply needs a poll)
    assert key in cache._gets

    done = await service.mark_running(job.id)

    assert key not in cache._gets, "the write detached the GET that began before it"
    assert await service.get_job(job.id) == done
    await early
