"""Cached ``GET /analyses/{id}`` through the service layer, on a warm cache.

Ours: ``HistoryService.get_job(id)`` for a finished job whose entry is in Redis (written
through by ``mark_succeeded``): breaker, single-flight, GET, envelope parse, orjson, pydantic.
Every timed call must be a hit (the benchmark fails if PostgreSQL is consulted).

Limits, same Redis server, same key, same bytes:

* ``redis-py asyncio GET``: ``redis.asyncio.Redis.get(key)`` at the same concurrency;
* ``redis-benchmark -t set,get -d <len>``: the server's GET rate from C clients (``-c 1``
  for the sequential pair, ``-c 50`` for the concurrent one).

Context: sync redis-py GET (sequential).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis

from app_patch.cache import Kind, RedisCache, cache_key
from app_patch.db import create_engine, create_session_factory
from app_patch.service import HistoryService
from bench.common import BenchError, Timed, run_timed, run_workers, tail
from bench.env import BenchEnv
from bench.history_write import new_job, result_in
from bench.parsers import redis_benchmark_rps
from bench.report import BenchResult, Ratio, Series

NAME = "cached_read"
TITLE = "Cached GET /analyses/{id} (service layer)"
TARGET = 0.50
REDIS_BENCHMARK = "redis-benchmark"
KEYS = 256  # distinct finished jobs read in turn


@dataclass(frozen=True)
class Sizes:
    reads: int  # per repetition and variant
    concurrency: int
    benchmark_requests: int
    repetitions: int


QUICK = Sizes(reads=3000, concurrency=32, benchmark_requests=20000, repetitions=3)
FULL = Sizes(reads=20000, concurrency=32, benchmark_requests=200000, repetitions=5)


async def _measure(env: BenchEnv, db_url: str, sizes: Sizes) -> dict[str, list[float]]:
    settings = env.settings(db_url)
    engine = create_engine(settings.db, db_url)
    sessions = create_session_factory(engine)
    cache = RedisCache(settings, env.redis_url)
    service = HistoryService(sessions, cache)
    raw = aioredis.Redis.from_url(env.redis_url)
    sync = redis.Redis.from_url(env.redis_url)
    samples: dict[str, list[float]] = {
        k: [] for k in ("ours_seq", "ours_conc", "raw_seq", "raw_conc", "sync_seq", "ours_one_key")
    }
    try:
        jobs = []
        for i in range(KEYS):
            job, _ = await service.create_job(new_job(i))
            await service.mark_running(job.id)
            jobs.append(await service.mark_succeeded(job.id, result_in()))
        ids = [job.id for job in jobs]
        keys = [cache_key(Kind.job, str(job_id)) for job_id in ids]
        stored = await raw.get(keys[0])
        if not stored:
            raise BenchError(f"the finished job was not written through to Redis ({keys[0]})")
        if await service.get_job(ids[0]) != jobs[0]:
            raise BenchError("the cached job differs from the written one")

        # distinct keys in flight: single-flight never coalesces these reads
        async def ours(i: int) -> None:
            got = await service.get_job(ids[i % KEYS])
            assert got is not None

        async def ours_one_key(_: int) -> None:
            got = await service.get_job(ids[0])
            assert got is not None

        async def raw_get(i: int) -> None:
            got = await raw.get(keys[i % KEYS])
            assert got is not None

        def sync_loop(n: int) -> Timed:
            started = time.perf_counter()
            for i in range(n):
                sync.get(keys[i % KEYS])
            return Timed(time.perf_counter() - started, n)

        stats = cache.stats.kinds[Kind.job]
        await run_workers(500, sizes.concurrency, ours)  # warm-up of both clients
        await run_workers(500, sizes.concurrency, raw_get)
        sync_loop(500)
        loads_before, coalesced_before = stats.loads, stats.coalesced
        for _ in range(sizes.repetitions):
            samples["ours_seq"].append((await run_workers(sizes.reads, 1, ours)).rate)
            samples["raw_seq"].append((await run_workers(sizes.reads, 1, raw_get)).rate)
            samples["sync_seq"].append(sync_loop(sizes.reads).rate)
            samples["ours_conc"].append(
                (await run_workers(sizes.reads, sizes.concurrency, ours)).rate
            )
            samples["raw_conc"].append(
                (await run_workers(sizes.reads, sizes.concurrency, raw_get)).rate
            )
        if stats.coalesced != coalesced_before:
            raise BenchError("reads of distinct keys were coalesced: the figure would be wrong")
        for _ in range(sizes.repetitions):
            samples["ours_one_key"].append(
                (await run_workers(sizes.reads, sizes.concurrency, ours_one_key)).rate
            )
        if stats.loads != loads_before:
            raise BenchError(
                f"{stats.loads - loads_before} timed reads missed the cache (not a warm read)"
            )
        samples["value_bytes"] = [float(len(stored))]
        samples["coalesced"] = [float(stats.coalesced - coalesced_before)]
        for job_id in ids:
            await cache.invalidate(Kind.job, str(job_id))
            await cache.invalidate(Kind.result, str(job_id))
        await raw.delete(*keys)
    finally:
        await raw.aclose()
        sync.close()
        await cache.close()
        await engine.dispose()
    return samples


def _redis_benchmark(env: BenchEnv, sizes: Sizes, value_bytes: int, clients: int) -> float:
    from shutil import which

    binary = which(REDIS_BENCHMARK)
    if binary is None:
        raise BenchError("redis-benchmark is not installed (Debian: redis-tools)")
    target = env.redis_target
    requests = sizes.benchmark_requests if clients > 1 else sizes.benchmark_requests // 4
    args = [
        binary, *target.cli_args(), "-t", "set,get", "-n", str(requests), "-c", str(clients),
        "-d", str(value_bytes), "-q", "--csv",
    ]  # fmt: skip
    done = run_timed(args, timeout_s=300)
    if done.returncode != 0:
        raise BenchError(f"redis-benchmark failed: {tail(done.stderr + done.stdout)}")
    return redis_benchmark_rps(done.stdout, "GET")


def _cleanup_benchmark_key(env: BenchEnv) -> None:
    client = redis.Redis.from_url(env.redis_url)
    try:
        client.delete("key:__rand_int__")  # the key redis-benchmark's SET/GET use
    finally:
        client.close()


def run(env: BenchEnv, quick: bool) -> BenchResult:
    sizes = QUICK if quick else FULL
    db_url = env.create_database("cache")
    samples = asyncio.run(_measure(env, db_url, sizes))
    value_bytes = int(samples.pop("value_bytes")[0])
    coalesced = int(samples.pop("coalesced")[0])
    bench_seq: list[float] = []
    bench_conc: list[float] = []
    try:
        for _ in range(sizes.repetitions):
            bench_seq.append(_redis_benchmark(env, sizes, value_bytes, 1))
            bench_conc.append(_redis_benchmark(env, sizes, value_bytes, 50))
    finally:
        _cleanup_benchmark_key(env)
    env.drop_database(db_url)
    c = sizes.concurrency
    return BenchResult(
        name=NAME,
        title=TITLE,
        series=[
            Series(
                "ours_seq",
                "ours: HistoryService.get_job, sequential",
                "reads/s",
                samples["ours_seq"],
                note="1 coroutine, warm cache, every read a hit",
            ),
            Series(
                "raw_seq",
                "raw redis-py asyncio GET, sequential",
                "reads/s",
                samples["raw_seq"],
                role="limit",
                note="same key, same bytes",
            ),
            Series(
                "bench_seq",
                "redis-benchmark GET -c 1",
                "reads/s",
                bench_seq,
                role="limit",
                note=f"-t set,get -d {value_bytes}",
            ),
            Series(
                "ours_conc",
                f"ours: HistoryService.get_job, {c} concurrent",
                "reads/s",
                samples["ours_conc"],
                note=f"{c} coroutines, one event loop",
            ),
            Series(
                "raw_conc",
                f"raw redis-py asyncio GET, {c} concurrent",
                "reads/s",
                samples["raw_conc"],
                role="limit",
                note=f"{c} coroutines, default pool",
            ),
            Series(
                "bench_conc",
                "redis-benchmark GET -c 50",
                "reads/s",
                bench_conc,
                role="limit",
                note=f"-t set,get -d {value_bytes}",
            ),
            Series(
                "sync_seq",
                "raw redis-py sync GET, sequential",
                "reads/s",
                samples["sync_seq"],
                role="context",
            ),
            Series(
                "ours_one_key",
                f"ours: {c} concurrent reads of ONE key",
                "reads/s",
                samples["ours_one_key"],
                role="context",
                note=f"single-flight shares one lookup ({coalesced} reads coalesced)",
            ),
        ],
        ratios=[
            Ratio("ours_seq", "raw_seq", TARGET),
            Ratio("ours_conc", "raw_conc", TARGET),
            Ratio("ours_seq", "bench_seq"),
            Ratio("ours_conc", "bench_conc"),
        ],
        params={
            "reads_per_rep": sizes.reads,
            "concurrency": c,
            "value_bytes": value_bytes,
            "distinct_jobs": KEYS,
            "redis_benchmark_requests": sizes.benchmark_requests,
            "repetitions": sizes.repetitions,
        },
        notes=[
            "The value is the cache envelope of a finished job with its result, as "
            "HistoryService.mark_succeeded wrote it; ours decodes it into a JobOut each time.",
            f"Reads rotate over {KEYS} finished jobs so that concurrent reads never share a "
            "single-flight lookup (checked: 0 coalesced); the one-key row shows what "
            "single-flight does when they do.",
        ],
    )
