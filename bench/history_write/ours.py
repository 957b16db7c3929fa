"""Ours: the writes through ``app_patch.repository`` and ``HistoryService``."""

from __future__ import annotations

import datetime as dt
import time

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch import repository as repo
from app_patch.cache import RedisCache
from app_patch.db import create_engine, create_session_factory
from app_patch.service import HistoryService
from bench.common import BenchError, Timed, run_workers
from bench.env import BenchEnv
from bench.history_write.job import finished_job, new_job, result_in
from bench.history_write.sizes import Sizes


async def write_three_txn(sessions: async_sessionmaker[AsyncSession], i: int) -> None:
    async with sessions.begin() as session:
        job, _ = await repo.create_job(session, new_job(i))
    async with sessions.begin() as session:
        await repo.mark_running(session, job.id)
    async with sessions.begin() as session:
        await repo.mark_succeeded(session, job.id, result_in())


async def write_finished(sessions: async_sessionmaker[AsyncSession], i: int) -> None:
    now = dt.datetime.now(dt.UTC)
    async with sessions.begin() as session:
        await repo.record_finished(session, finished_job(i, now))


async def write_finished_service(service: HistoryService, i: int) -> None:
    now = dt.datetime.now(dt.UTC)
    await service.record_finished(finished_job(i, now))


async def run_ours(env: BenchEnv, db_url: str, sizes: Sizes, via: str) -> Timed:
    """One variant (``finished``, ``service_finished``, ``batch`` or ``three_txn``), timed."""
    settings = env.settings(db_url)
    engine = create_engine(settings.db, db_url)
    sessions = create_session_factory(engine)
    cache = RedisCache(settings, env.redis_url) if via == "service_finished" else None
    try:
        if via == "batch":
            return await batched(sessions, sizes)
        if cache is not None:
            service = HistoryService(sessions, cache)

            async def work(i: int) -> None:
                await write_finished_service(service, i)
        elif via == "finished":

            async def work(i: int) -> None:
                await write_finished(sessions, i)
        else:

            async def work(i: int) -> None:
                await write_three_txn(sessions, i)

        await run_workers(sizes.concurrency * 2, sizes.concurrency, work)  # warm the pool
        return await run_workers(sizes.jobs, sizes.concurrency, work)
    finally:
        if cache is not None:
            await cache.close()
        await engine.dispose()


async def batched(sessions: async_sessionmaker[AsyncSession], sizes: Sizes) -> Timed:
    """``record_finished_many`` in batches, one transaction each, like raw_executemany."""
    async with sessions.begin() as session:  # warm-up: connection, statements
        now = dt.datetime.now(dt.UTC)
        await repo.record_finished_many(session, [finished_job(i, now) for i in range(10)])
    started = time.perf_counter()
    for start in range(0, sizes.raw_jobs, sizes.batch):
        count = min(sizes.batch, sizes.raw_jobs - start)
        now = dt.datetime.now(dt.UTC)
        batch = [finished_job(i, now) for i in range(start, start + count)]
        async with sessions.begin() as session:
            inserted = await repo.record_finished_many(session, batch)
        if inserted != count:
            raise BenchError(f"record_finished_many inserted {inserted} of {count}")
    return Timed(time.perf_counter() - started, sizes.raw_jobs)
