"""History write: finished jobs (``analysis_jobs`` row + ``analysis_results`` row).

Ours, through ``app_patch.repository`` (and ``HistoryService`` on top of it):

* ``finished``: ``record_finished`` -- what the API does for an analysis that already ran:
  one transaction per job, N concurrent writers (and ``service_finished``: the same through
  ``HistoryService``, i.e. plus the Redis write-through and history bump);
* ``batch``: ``record_finished_many`` -- batches of B jobs, one transaction per batch;
* ``three_txn``: ``create_job`` + ``mark_running`` + ``mark_succeeded`` -- the state machine,
  three transactions per job, N concurrent writers.

Limits, same server, same tables, same columns and values:

* ``raw executemany``: psycopg ``executemany`` of the job rows then the result rows, batches of
  B, one transaction per batch, one connection (the driver's best rate for these rows; the
  like-for-like limit of ``batch``);
* ``raw 1 txn/job``: psycopg, the two INSERTs in one transaction per job on N async
  connections (the like-for-like limit of ``finished``);
* ``pgbench``: a custom script inserting one job and its result per transaction
  (``-n -c N -j 2 -T secs -f script``) over the same socket.

Peer, same server, same tables, same rows: ``peer``, the write done the way
fastapi/full-stack-fastapi-template does it (``bench.peer_sqlmodel``: SQLModel session, add +
commit + refresh per job, sync route in the threadpool), N concurrent requests; ``finished``
should be at least twice as fast.

Context (no target): ``raw 3 txns/job``: psycopg doing the state machine's three transactions
with minimal SQL, the like-for-like limit of ``three_txn``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch import repository as repo
from app_patch.cache import RedisCache
from app_patch.db import create_engine, create_session_factory, libpq_url
from app_patch.repository import NewJob
from app_patch.schemas import ResultIn
from app_patch.service import HistoryService
from bench.common import BenchError, Timed, pg_binary, run_timed, run_workers, tail
from bench.env import BenchEnv, PgTarget
from bench.parsers import pgbench_failed, pgbench_tps
from bench.report import BenchResult, Ratio, Series

NAME = "history_write"
TITLE = "History write (job + result)"
TARGET = 0.60
PEER_TARGET = 2.0  # times the peer's rate

RESULT: dict[str, Any] = {
    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "size_bytes": 4096,
    "content_type": "text/plain",
}
SUMMARY = "text/plain, 4096 bytes"
ENGINE = ("media-analysis-reference", "1.0.0")
DURATION_MS = 0.42


@dataclass(frozen=True)
class Sizes:
    jobs: int  # per repetition, ours and the raw 3-txn protocol
    raw_jobs: int  # per repetition, executemany
    batch: int
    concurrency: int
    pgbench_s: int
    repetitions: int


QUICK = Sizes(jobs=200, raw_jobs=3000, batch=500, concurrency=8, pgbench_s=2, repetitions=3)
FULL = Sizes(jobs=2000, raw_jobs=20000, batch=500, concurrency=8, pgbench_s=5, repetitions=5)


def result_in() -> ResultIn:
    return ResultIn(
        result=RESULT,
        summary=SUMMARY,
        engine_name=ENGINE[0],
        engine_version=ENGINE[1],
        duration_ms=DURATION_MS,
    )


def new_job(i: int) -> NewJob:
    return NewJob(analysis_type="basic", params={"bench": i}, client_ref="bench")


# ---------------------------------------------------------------- ours


def finished_job(i: int, when: dt.datetime) -> repo.FinishedJob:
    return repo.FinishedJob(new=new_job(i), started_at=when, finished_at=when, result=result_in())


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
        await repo.record_finished(session, repo.FinishedJob(new_job(i), now, now, result_in()))


async def write_finished_service(service: HistoryService, i: int) -> None:
    now = dt.datetime.now(dt.UTC)
    await service.record_finished(repo.FinishedJob(new_job(i), now, now, result_in()))


async def _ours(env: BenchEnv, db_url: str, sizes: Sizes, via: str) -> Timed:
    settings = env.settings(db_url)
    engine = create_engine(settings.db, db_url)
    sessions = create_session_factory(engine)
    cache = RedisCache(settings, env.redis_url) if via == "service_finished" else None
    try:
        if via == "batch":
            return await _batched(sessions, sizes)
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


async def _batched(sessions: async_sessionmaker[AsyncSession], sizes: Sizes) -> Timed:
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


# ---------------------------------------------------------------- limits

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
            (uuid.uuid4(), job_id, Jsonb(RESULT), SUMMARY, ENGINE[0], ENGINE[1], DURATION_MS)
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


async def raw_one_txn(db_url: str, sizes: Sizes) -> Timed:
    """Job + result INSERTs in one transaction per job, on ``concurrency`` connections."""
    conns = [
        await psycopg.AsyncConnection.connect(libpq_url(db_url)) for _ in range(sizes.concurrency)
    ]
    free: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)

    async def work(i: int) -> None:
        conn = await free.get()
        try:
            now = dt.datetime.now(dt.UTC)
            job_id = uuid.uuid4()
            async with conn.transaction():
                await conn.execute(
                    INSERT_JOB,
                    (job_id, "basic", "succeeded", Jsonb({"bench": i}), "bench", now, now, 1),
                )
                await conn.execute(
                    INSERT_RESULT,
                    (uuid.uuid4(), job_id, Jsonb(RESULT), SUMMARY, *ENGINE, DURATION_MS),
                )
        finally:
            free.put_nowait(conn)

    try:
        await run_workers(sizes.concurrency * 2, sizes.concurrency, work)
        return await run_workers(sizes.jobs, sizes.concurrency, work)
    finally:
        for conn in conns:
            await conn.close()


async def raw_protocol(db_url: str, sizes: Sizes) -> Timed:
    """The state machine's three transactions per job, minimal SQL, ``concurrency`` connections."""
    conns = [
        await psycopg.AsyncConnection.connect(libpq_url(db_url)) for _ in range(sizes.concurrency)
    ]
    free: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)

    async def work(i: int) -> None:
        conn = await free.get()
        try:
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
                    (uuid.uuid4(), job_id, Jsonb(RESULT), SUMMARY, *ENGINE, DURATION_MS),
                )
        finally:
            free.put_nowait(conn)

    try:
        await run_workers(sizes.concurrency * 2, sizes.concurrency, work)
        return await run_workers(sizes.jobs, sizes.concurrency, work)
    finally:
        for conn in conns:
            await conn.close()


PGBENCH_SCRIPT = """\\set i random(1, 1000000000)
WITH job AS (
  INSERT INTO analysis_jobs (id, analysis_type, status, params, client_ref, started_at,
                             finished_at, attempts)
  VALUES (gen_random_uuid(), 'basic', 'succeeded', jsonb_build_object('bench', :i), 'bench',
          now(), now(), 1)
  RETURNING id
)
INSERT INTO analysis_results (id, job_id, result, summary, engine_name, engine_version,
                              duration_ms)
SELECT gen_random_uuid(), job.id, '{result}'::jsonb, '{summary}', '{engine}', '{version}',
       {duration} FROM job;
"""


def pgbench_script() -> str:
    import json

    return (
        PGBENCH_SCRIPT.replace("{result}", json.dumps(RESULT))
        .replace("{summary}", SUMMARY)
        .replace("{engine}", ENGINE[0])
        .replace("{version}", ENGINE[1])
        .replace("{duration}", str(DURATION_MS))
    )


def run_pgbench(env: BenchEnv, db_url: str, sizes: Sizes) -> float:
    binary = pg_binary("pgbench")
    if binary is None:
        raise BenchError("pgbench not found (pgserver's bin dir or PATH)")
    script = env.scratch_dir("pgbench") / "insert_job.sql"
    script.write_text(pgbench_script(), encoding="utf-8")
    target = PgTarget.from_url(db_url)
    args: list[str | os.PathLike[str]] = [
        binary, "-n", "-c", str(sizes.concurrency), "-j", "2", "-T", str(sizes.pgbench_s),
        "-f", script, *target.args(), target.database,
    ]  # fmt: skip
    done = run_timed(args, env=target.env(), timeout_s=sizes.pgbench_s + 60)
    if done.returncode != 0:
        raise BenchError(f"pgbench failed ({done.returncode}): {tail(done.stderr + done.stdout)}")
    failed = pgbench_failed(done.stdout)
    if failed:
        raise BenchError(f"pgbench reported {failed} failed transactions")
    return pgbench_tps(done.stdout)


def truncate(db_url: str) -> None:
    """Empty the tables. No VACUUM ANALYZE afterwards: statistics saying "0 rows" would make
    the foreign-key check of analysis_results a cached sequential scan, and every variant
    would slow down quadratically as its table grows (an artefact, not a limit)."""
    with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
        conn.execute("TRUNCATE analysis_results, artifacts, analysis_jobs")


def count_rows(db_url: str) -> tuple[int, int]:
    with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
        jobs = conn.execute("SELECT count(*) FROM analysis_jobs").fetchone()
        results = conn.execute("SELECT count(*) FROM analysis_results").fetchone()
    return (int(jobs[0]) if jobs else 0, int(results[0]) if results else 0)


# ---------------------------------------------------------------- the benchmark


VARIANTS = ("finished", "service_finished", "batch", "three_txn")


def run_peer_once(db_url: str, sizes: Sizes) -> float:
    from bench.peer_sqlmodel import run_peer

    warm_up = sizes.concurrency * 2
    peer = asyncio.run(run_peer(db_url, sizes.jobs, sizes.concurrency, result_in, warm_up))
    if count_rows(db_url) != (sizes.jobs + warm_up,) * 2:
        raise BenchError(f"the peer wrote {count_rows(db_url)} (jobs, results)")
    return peer.rate


def missing_peer() -> str | None:
    """Why the peer cannot run here (its package is in the dev extra only), or None."""
    if importlib.util.find_spec("sqlmodel") is None:
        return "peer not measured: sqlmodel is not installed (pip install -e '.[dev]')"
    return None


def run(env: BenchEnv, quick: bool) -> BenchResult:
    sizes = QUICK if quick else FULL
    peer_missing = missing_peer()
    db_url = env.create_database("history")
    keys = (*VARIANTS, "peer", "executemany", "raw_finished", "pgbench", "protocol")
    samples: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(sizes.repetitions):  # variants interleaved, so drift hits all alike
        for via in VARIANTS:
            truncate(db_url)
            samples[via].append(asyncio.run(_ours(env, db_url, sizes, via)).rate)
            jobs, results = count_rows(db_url)
            if jobs != results or jobs < sizes.jobs:
                raise BenchError(f"{via} wrote {jobs} jobs / {results} results")
        if peer_missing is None:
            truncate(db_url)
            samples["peer"].append(run_peer_once(db_url, sizes))
        truncate(db_url)
        samples["executemany"].append(raw_executemany(db_url, sizes).rate)
        truncate(db_url)
        samples["raw_finished"].append(asyncio.run(raw_one_txn(db_url, sizes)).rate)
        truncate(db_url)
        samples["protocol"].append(asyncio.run(raw_protocol(db_url, sizes)).rate)
        truncate(db_url)
        samples["pgbench"].append(run_pgbench(env, db_url, sizes))
    env.drop_database(db_url)

    c, b = sizes.concurrency, sizes.batch
    return BenchResult(
        name=NAME,
        title=TITLE,
        series=[
            Series(
                "finished",
                "ours: record_finished, 1 txn/job",
                "jobs/s",
                samples["finished"],
                note=f"{c} coroutines, pool 20+30 (the API's write)",
            ),
            Series(
                "service_finished",
                "ours: HistoryService.record_finished",
                "jobs/s",
                samples["service_finished"],
                note=f"{c} coroutines; + Redis write-through and history bump",
            ),
            Series(
                "batch",
                f"ours: record_finished_many, {b}/txn",
                "jobs/s",
                samples["batch"],
                note="1 connection, sequential batches",
            ),
            Series(
                "three_txn",
                "ours: create + running + succeeded, 3 txns/job",
                "jobs/s",
                samples["three_txn"],
                note=f"{c} coroutines (the state machine)",
            ),
            Series(
                "peer",
                "peer: full-stack-fastapi-template way, 1 txn/job",
                "jobs/s",
                samples["peer"],
                role="peer",
                note=f"{c} requests; sync SQLModel Session add + commit + refresh, threadpool",
            ),
            Series(
                "executemany",
                f"raw psycopg executemany, {b}/txn",
                "jobs/s",
                samples["executemany"],
                role="limit",
                note="1 connection",
            ),
            Series(
                "raw_finished",
                "raw psycopg, 1 txn/job",
                "jobs/s",
                samples["raw_finished"],
                role="limit",
                note=f"{c} async connections, the two INSERTs",
            ),
            Series(
                "pgbench",
                "pgbench insert tps, 1 txn/job",
                "jobs/s",
                samples["pgbench"],
                role="limit",
                note=f"-n -c {c} -j 2 -T {sizes.pgbench_s}",
            ),
            Series(
                "protocol",
                "raw psycopg, 3 txns/job",
                "jobs/s",
                samples["protocol"],
                role="context",
                note=f"{c} async connections, minimal SQL",
            ),
        ],
        ratios=[
            Ratio("batch", "executemany", TARGET),
            Ratio("finished", "raw_finished", TARGET),
            Ratio("service_finished", "raw_finished", TARGET),
            Ratio("finished", "executemany"),
            Ratio("finished", "pgbench"),
            Ratio("three_txn", "protocol"),
            Ratio("finished", "peer", PEER_TARGET, unit="x"),
            Ratio("service_finished", "peer", unit="x"),
        ],
        params={
            "jobs_per_rep": sizes.jobs,
            "batched_jobs_per_rep": sizes.raw_jobs,
            "batch": b,
            "concurrency": c,
            "repetitions": sizes.repetitions,
        },
        notes=[
            "A job is 1 analysis_jobs row + 1 analysis_results row with the same columns and "
            "values in every variant; tables are truncated before each measurement.",
            "Targets apply like for like: batched vs batched, one transaction per job vs one "
            "transaction per job (synchronous_commit=on: each commit waits for its WAL flush).",
            "The peer writes the same rows on the same tables (SQLModel models mapped onto "
            "them, psycopg 3 sync engine with the template's defaults); it returns the "
            "refreshed row, ours the JobOut with its result.",
            *([peer_missing] if peer_missing else []),
        ],
    )
