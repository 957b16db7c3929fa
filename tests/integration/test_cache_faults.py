"""Redis failures: a stopped and a paused (SIGSTOP) redis-server of the test's own.

Reads and writes must keep working from PostgreSQL with no exception surfaced, bounded by
the configured timeout, and the cache must come back by itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch.cache import Kind, RedisCache, cache_key, decode, job_placement
from app_patch.embedded import EmbeddedRedis
from app_patch.media_lookup import MediaLookup
from app_patch.models import JobStatus, MediaFile
from app_patch.repository import NewJob
from app_patch.schemas import JobOut
from app_patch.service import HistoryService
from app_patch.settings import Settings
from infra.loopback import free_port
from tests.integration.cache_support import make_settings, stored
from tests.integration.history_data import a_result

pytestmark = pytest.mark.usefixtures("clean_db")

Sessions = async_sessionmaker[AsyncSession]
T = TypeVar("T")

OP_TIMEOUT_S = 0.3
RECOVERY_S = 0.5
MARGIN_S = 0.25  # PostgreSQL read plus scheduling; a correctness bound, not a benchmark


def fault_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "socket_timeout_s": 0.2,
        "connect_timeout_s": 0.2,
        "op_timeout_s": OP_TIMEOUT_S,
        "breaker_failure_threshold": 2,
        "breaker_recovery_s": RECOVERY_S,
        "ttl_job_running_s": 30,  # long enough that a stale entry would still be there
    }
    values.update(overrides)
    return make_settings(**values)


def resume(server: EmbeddedRedis) -> None:
    pid = server.pid()
    if pid is not None:
        os.kill(pid, signal.SIGCONT)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server only this test uses, so it can be stopped and paused."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port())
    server.start()
    try:
        yield server
    finally:
        resume(server)  # never leave a stopped process behind
        server.stop()


@pytest.fixture
async def fragile(own_redis: EmbeddedRedis) -> AsyncIterator[RedisCache]:
    cache = RedisCache(fault_settings(), own_redis.url)
    yield cache
    await cache.close()


@pytest.fixture
def cache(fragile: RedisCache) -> RedisCache:
    """The conftest's ``service`` and ``media_lookup`` read through this module's Redis."""
    return fragile


async def timed(awaitable: Awaitable[T]) -> tuple[T, float]:
    start = time.monotonic()
    value = await awaitable
    return value, time.monotonic() - start


async def seed(service: HistoryService, sessions: Sessions) -> tuple[list[JobOut], str]:
    jobs = [(await service.create_job(NewJob(analysis_type="basic")))[0] for _ in range(4)]
    jobs[0] = await service.mark_succeeded(jobs[0].id, a_result())
    jobs[1] = await service.mark_running(jobs[1].id)
    sha = "ee" * 32
    async with sessions.begin() as session:
        session.add(
            MediaFile(
                sha256=sha,
                size_bytes=3,
                content_type="text/plain",
                original_name=None,
                storage_key=f"uploads/{sha}",
            )
        )
    return jobs, sha


async def read_everything(
    service: HistoryService, media_lookup: MediaLookup, jobs: list[JobOut], sha: str
) -> None:
    """Every read returns exactly what PostgreSQL holds (exceptions would fail the test)."""
    for job in jobs:
        assert await service.get_job(job.id) == job
    page = await service.list_history(limit=10)
    assert [j.id for j in page.items] == [j.id for j in reversed(jobs)]
    assert page.items == list(reversed(jobs))
    media = await media_lookup.get(sha)
    assert media is not None and media.sha256 == sha


async def test_stopped_redis_falls_back_to_postgres_and_recovers(
    service: HistoryService,
    media_lookup: MediaLookup,
    fragile: RedisCache,
    own_redis: EmbeddedRedis,
    session_factory: Sessions,
) -> None:
    jobs, sha = await seed(service, session_factory)
    await read_everything(service, media_lookup, jobs, sha)
    await read_everything(service, media_lookup, jobs, sha)
    assert fragile.stats.kinds[Kind.job].hits >= len(jobs)
    assert fragile.state == "ok"

    own_redis.stop()
    for _ in range(10):
        await read_everything(service, media_lookup, jobs, sha)
    assert fragile.stats.breaker_state == "opened"
    assert fragile.stats.breaker_opened_total >= 1
    # A property that changed with Redis: mypy still holds the "ok" it narrowed it to above.
    assert fragile.state == "down"  # type: ignore[comparison-overlap]
    assert await fragile.ping() is False
    _, open_cost = await timed(service.get_job(jobs[2].id))
    assert open_cost < OP_TIMEOUT_S / 2, "an open breaker must not wait on Redis"

    # Writes keep working while Redis is down, and reads see them.
    jobs[2] = await service.mark_succeeded(jobs[2].id, a_result(late=True))
    newest, _ = await service.create_job(NewJob(analysis_type="basic"))
    jobs.append(newest)
    await read_everything(service, media_lookup, jobs, sha)
    assert fragile.stats.kinds[Kind.job].bypassed > 0

    own_redis.start()  # same port, empty (no persistence)
    await asyncio.sleep(RECOVERY_S + 0.1)
    hits_before = fragile.stats.kinds[Kind.job].hits
    for _ in range(20):  # bounded: the first call after the recovery time closes it
        await read_everything(service, media_lookup, jobs, sha)
        if fragile.stats.breaker_state == "closed":
            break
        await asyncio.sleep(RECOVERY_S / 2)
    assert fragile.stats.breaker_state == "closed"
    await read_everything(service, media_lookup, jobs, sha)
    assert fragile.stats.kinds[Kind.job].hits > hits_before, "hits resume after recovery"
    assert fragile.state == "ok" and await fragile.ping() is True


async def test_paused_redis_stalls_a_read_no_longer_than_the_timeout(
    service: HistoryService,
    media_lookup: MediaLookup,
    fragile: RedisCache,
    own_redis: EmbeddedRedis,
    session_factory: Sessions,
) -> None:
    jobs, sha = await seed(service, session_factory)
    await read_everything(service, media_lookup, jobs, sha)
    pid = own_redis.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        bound = OP_TIMEOUT_S + MARGIN_S
        got, first = await timed(service.get_job(jobs[0].id))
        assert got == jobs[0]
        assert first < bound, f"one read took {first:.3f}s with a {OP_TIMEOUT_S}s timeout"
        assert first >= 0.15, "the first read should really have waited on the socket"
        for job in jobs:  # until the breaker opens, each read is bounded the same way
            got, took = await timed(service.get_job(job.id))
            assert got == job and took < bound
        assert fragile.stats.breaker_state == "opened"
        _, open_cost = await timed(service.get_job(jobs[1].id))
        assert open_cost < OP_TIMEOUT_S / 2

        # Concurrent readers while paused: all answered, none waits past the bound.
        start = time.monotonic()
        pages = await asyncio.gather(*(service.list_history(limit=10) for _ in range(50)))
        assert all(len(p.items) == len(jobs) for p in pages)
        assert time.monotonic() - start < bound

        await asyncio.sleep(RECOVERY_S + 0.05)  # half-open: one probe pays the timeout
        probes = await asyncio.gather(*(timed(service.get_job(j.id)) for j in jobs))
        assert [p[0] for p in probes] == jobs
        assert max(p[1] for p in probes) < bound
        assert fragile.stats.breaker_state == "opened"
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_a_write_redis_missed_is_not_read_stale_when_it_returns(
    service: HistoryService,
    fragile: RedisCache,
    own_redis: EmbeddedRedis,
    session_factory: Sessions,
    redis_url: str,
) -> None:
    """A paused Redis keeps the "running" entry; the write-through of "succeeded" misses it.
    After Redis resumes, this process must still never read "running"."""
    job, _ = await service.create_job(NewJob(analysis_type="basic"))
    running = await service.mark_running(job.id)
    assert await service.get_job(job.id) == running
    key = cache_key(Kind.job, str(job.id))
    pid = own_redis.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(3):  # open the breaker, so the write below cannot reach Redis
            await service.get_job(job.id)
        assert fragile.state == "down"
        done, took = await timed(service.mark_succeeded(job.id, a_result()))
        assert isinstance(done, JobOut) and done.status is JobStatus.succeeded
        assert took < OP_TIMEOUT_S + MARGIN_S
        got = await service.get_job(job.id)
        assert got is not None and got.status is JobStatus.succeeded
    finally:
        os.kill(pid, signal.SIGCONT)

    raw = Redis.from_url(own_redis.url)
    try:
        stale = await stored(raw, key)
        assert decode(stale, JobOut).status is JobStatus.running, "Redis still holds the old state"
        await asyncio.sleep(RECOVERY_S + 0.1)
        for _ in range(5):
            got = await service.get_job(job.id)
            assert got is not None and got.status is JobStatus.succeeded
        assert fragile.stats.breaker_state == "closed"
        refreshed = await stored(raw, key)
        assert decode(refreshed, JobOut).status is JobStatus.succeeded
    finally:
        await raw.aclose()


async def test_password_setting_overrides_the_url(
    tmp_path: Path, session_factory: Sessions
) -> None:
    server = EmbeddedRedis(tmp_path / "auth", port=free_port(), password="s3cret")
    server.start()
    no_password = f"redis://127.0.0.1:{server.port}/0"
    wrong_password = f"redis://:wrong@127.0.0.1:{server.port}/0"
    good = RedisCache(fault_settings(password=SecretStr("s3cret")), wrong_password)
    anonymous = RedisCache(fault_settings(), no_password)
    try:
        assert await good.ping() is True
        assert await anonymous.ping() is False
        job, _ = await HistoryService(session_factory, anonymous).create_job(
            NewJob(analysis_type="basic")
        )
        got = await anonymous.get_or_load(
            Kind.job, str(job.id), JobOut, lambda: _return(job), job_placement
        )
        assert got == job  # an unusable Redis never fails a read
    finally:
        await good.close()
        await anonymous.close()
        server.stop()


async def _return(job: JobOut) -> JobOut:
    return job
