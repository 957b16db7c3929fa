"""The limits: the same rows written by raw psycopg (executemany, 1 and 3 txns per job)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from app_patch.db import libpq_url
from bench.common import Timed, run_workers
from bench.history_write.job import ANALYZER, DURATION_MS, RESULT, SUMMARY
from bench.history_write.sizes import Sizes

INSERT_JOB = (
    "INSERT INTO analysis_jobs (id, analysis_type, status, params, client_ref, started_at,"
    " finished_at, attempts) VALUES (%s, %s, %s::job_status, %s, %s, %s, %s, %s)"
)
INSERT_RESULT = (
    "INSERT INTO analysis_results (id, job_id, result, summary, engine_name, engine_version,"
    " duration_ms) VALUES (%s, %s, %s, %s, %s, %s, %s)"
)


def raw_rows(start: int, count: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    now = dt.datetime.now(dt.UTC)
    jobs: list[tuple[Any, ...]] = []
    results: list[tuple[Any, ...]] = []
    for i in range(start, start + count):
        job_id = uuid.uuid4()
        jobs.append((job_id, "basic", "succeeded", Jsonb({"bench": i}), "bench", now, now, 1))
        results.append(
            (uuid.uuid4(), job_id, Jsonb(RESULT), SUMMARY, ANALYZER[0], ANALYZER[1], DURATION_MS)
        )
    return jobs, results


def raw_executemany(db_url: str, sizes: Sizes) -> Timed:
    """Final rows, ``executemany`` per table, one commit per batch, one connection.

    The rows are built inside the timed loop (as ours builds its own)."""
    with psycopg.connect(libpq_url(db_url)) as conn:
        with conn.cursor() as cur:  # warm-up: connection, plans
            jobs, results = raw_rows(0, 10)
            cur.executemany(INSERT_JOB, jobs)
            cur.executemany(INSERT_RESULT, results)
        conn.commit()
        started = time.perf_counter()
        for start in range(0, sizes.raw_jobs, sizes.batch):
            count = min(sizes.batch, sizes.raw_jobs - start)
            jobs, results = raw_rows(start, count)
            with conn.cursor() as cur:
                cur.executemany(INSERT_JOB, jobs)
                cur.executemany(INSERT_RESULT, results)
            conn.commit()
        return Timed(time.perf_counter() - started, sizes.raw_jobs)


async def on_connections(
    db_url: str, sizes: Sizes, write: Callable[[psycopg.AsyncConnection[Any], int], Awaitable[None]]
) -> Timed:
    """``write(conn, i)`` for every job (after a warm-up), on ``concurrency`` connections."""
    conns = [
        await psycopg.AsyncConnection.connect(libpq_url(db_url)) for _ in range(sizes.concurrency)
    ]
    free: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)

    async def work(i: int) -> None:
        conn = await free.get()
        try:
            await write(conn, i)
        finally:
            free.put_nowait(conn)

    try:
        await run_workers(sizes.concurrency * 2, sizes.concurrency, work)
        return await run_workers(sizes.jobs, sizes.concurrency, work)
    finally:
        for conn in conns:
            await conn.close()


async def one_txn(conn: psycopg.AsyncConnection[Any], i: int) -> None:
    """Job + result INSERTs in one transaction."""
    now = dt.datetime.now(dt.UTC)
    job_id = uuid.uuid4()
    async with conn.transaction():
        await conn.execute(
            INSERT_JOB,
            (job_id, "basic", "succeeded", Jsonb({"bench": i}), "bench", now, now, 1),
        )
        await conn.execute(
            INSERT_RESULT,
            (uuid.uuid4(), job_id, Jsonb(RESULT), SUMMARY, *ANALYZER, DURATION_MS),
        )


async def three_txns(conn: psycopg.AsyncConnection[Any], i: int) -> None:
    """The state machine's three transactions, minimal SQL."""
    job_id = uuid.uuid4()
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO analysis_jobs (id, analysis_type, status, params, client_ref)"
            " VALUES (%s, 'basic', 'queued', %s, 'bench')",
            (job_id, Jsonb({"bench": i})),
        )
    async with conn.transaction():
        await conn.execute(
            "UPDATE analysis_jobs SET status = 'running', started_at = now(),"
            " attempts = attempts + 1 WHERE id = %s AND status IN ('queued', 'running')",
            (job_id,),
        )
    async with conn.transaction():
        await conn.execute(
            "UPDATE analysis_jobs SET status = 'succeeded', finished_at = now()"
            " WHERE id = %s AND status IN ('queued', 'running')",
            (job_id,),
        )
        await conn.execute(
            INSERT_RESULT,
            (uuid.uuid4(), job_id, Jsonb(RESULT), SUMMARY, *ANALYZER, DURATION_MS),
        )


async def raw_one_txn(db_url: str, sizes: Sizes) -> Timed:
    """Job + result INSERTs in one transaction per job, on ``concurrency`` connections."""
    return await on_connections(db_url, sizes, one_txn)


async def raw_protocol(db_url: str, sizes: Sizes) -> Timed:
    """The state machine's three transactions per job, minimal SQL, ``concurrency`` connections."""
    return await on_connections(db_url, sizes, three_txns)
