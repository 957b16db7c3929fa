"""Cached ``GET /analyses/{id}`` through the service layer, on a warm cache.

Ours: ``HistoryService.get_job(id)`` for a finished job whose entry is in Redis (written
through by ``mark_succeeded``): breaker, single-flight, GET, envelope parse, orjson, pydantic.
Every timed call must be a hit (the benchmark fails if PostgreSQL is consulted).

Limits, same Redis server, same key, same bytes:

* ``redis-py asyncio GET``: ``redis.asyncio.Redis.get(key)`` at the same concurrency;
* ``redis-benchmark -t set,get -d <len>``: the server's GET rate from C clients (``-c 1``
  for the sequential pair, ``-c 50`` for the concurrent one).

Peer, same Redis server, same JSON body, same key shape: ``cashews``, the read done the way a
cashews user caches a loader: ``@cache(ttl=...)`` on the same PostgreSQL loader ``get_job``
uses, the JSON codec registered with ``cashews.serialize.register_type``, a pool as large as
ours; warmed, then every timed call must be a hit (the loader is counted). Ours should be at
least as fast (ours / cashews >= 1.0).

Context: sync redis-py GET (sequential).

The sides of each pair run in a rotating order in every repetition, so that a burst of load
from elsewhere on the machine does not always land on the same side.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch import repository as repo
from app_patch.cache import Kind, RedisCache, cache_key, encode_body
from app_patch.db import create_engine, create_session_factory
from app_patch.schemas import JobOut
from app_patch.service import HistoryService
from app_patch.settings import Settings
from bench.common import BenchError, Timed, run_timed, run_workers, tail
from bench.env import BenchEnv
from bench.history_write import new_job, result_in
from bench.parsers import redis_benchmark_rps
from bench.report import BenchResult, Ratio, Series

NAME = "cached_read"
TITLE = "Cached GET /analyses/{id} (service layer)"
TARGET = 0.60
PEER_TARGET = 1.0  # times the peer's rate
PEER_PREFIX = "ma:v1:cashews"  # the peer's keys: ma:v1:cashews:<job id>, beside ours
REDIS_BENCHMARK = "redis-benchmark"
KEYS = 256  # distinct finished jobs read in turn


@dataclass(frozen=True)
class Sizes:
    reads: int  # per repetition and variant
    concurrency: int
    benchmark_requests: int
    repetitions: int


QUICK = Sizes(reads=3000, concurrency=32, benchmark_requests=20000, repetitions=5)
FULL = Sizes(reads=20000, concurrency=32, benchmark_requests=200000, repetitions=5)


Reader = Callable[[int], Awaitable[None]]


def missing_peer() -> str | None:
    """Why the peer cannot run here (its package is in the dev extra only), or None."""
    try:
        import cashews  # noqa: F401
    except ImportError:
        return "peer not measured: cashews is not installed (pip install -e '.[dev]')"
    return None


class CashewsPeer:
    """The same loader as ``HistoryService.get_job``'s, cached the cashews way."""

    def __init__(
        self, settings: Settings, redis_url: str, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        from cashews import Cache
        from cashews.serialize import register_type

        async def encode(value: JobOut, *args: Any, **kwargs: Any) -> bytes:
            return encode_body(value)  # the JSON body ours stores, byte for byte

        async def decode(value: bytes, *args: Any, **kwargs: Any) -> JobOut:
            return JobOut.model_validate_json(value)

        register_type(JobOut, encode, decode)
        self.cache = Cache()
        self.cache.setup(redis_url, max_connections=settings.redis.max_connections)
        self.loads = 0
        ttl = timedelta(seconds=settings.cache.ttl_job_finished_s)

        @self.cache(ttl=ttl, key=PEER_PREFIX + ":{job_id}")
        async def get_job(job_id: uuid.UUID) -> JobOut | None:
            self.loads += 1
            async with sessions() as session:
                return await repo.get_job(session, job_id)

        self.get_job = get_job

    def key(self, job_id: uuid.UUID) -> str:
        return f"{PEER_PREFIX}:{job_id}"

    async def close(self) -> None:
        await self.cache.close()


async def _rotated(
    samples: dict[str, list[float]],
    rep: int,
    sides: dict[str, tuple[Reader, int]],
    reads: int,
) -> None:
    """One measurement of each side, in an order that rotates with the repetition."""
    names = list(sides)
    turn = rep % len(names)
    for name in names[turn:] + names[:turn]:
        work, concurrency = sides[name]
        samples[name].append((await run_workers(reads, concurrency, work)).rate)


async def _measure(env: BenchEnv, db_url: str, sizes: Sizes) -> dict[str, list[float]]:
    settings = env.settings(db_url)
    engine = create_engine(settings.db, db_url)
    sessions = create_session_factory(engine)
    cache = RedisCache(settings, env.redis_url)
    service = HistoryService(sessions, cache)
    raw = aioredis.Redis.from_url(env.redis_url)
    sync = redis.Redis.from_url(env.redis_url)
    peer = CashewsPeer(settings, env.redis_url, sessions) if missing_peer() is None else None
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "ours_seq",
            "ours_conc",
            "raw_seq",
            "raw_conc",
            "peer_seq",
            "peer_conc",
            "sync_seq",
            "ours_one_key",
        )
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
        if peer is not None:
            for job in jobs:  # warm: one load per key, then only hits
                if await peer.get_job(job.id) != job:
                    raise BenchError("the peer's job differs from the written one")
            peer_stored = await raw.get(peer.key(ids[0]))
            body = encode_body(jobs[0])
            if not isinstance(peer_stored, bytes) or not peer_stored.endswith(body):
                raise BenchError(f"the peer did not store the same JSON body: {peer_stored!r}")
            if await peer.get_job(ids[0]) != jobs[0]:
                raise BenchError("the peer's cached job differs from the written one")

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

        async def peer_get(i: int) -> None:
            assert peer is not None
            got = await peer.get_job(ids[i % KEYS])
            assert got is not None

        def sync_loop(n: int) -> Timed:
            started = time.perf_counter()
            for i in range(n):
                sync.get(keys[i % KEYS])
            return Timed(time.perf_counter() - started, n)

        stats = cache.stats.kinds[Kind.job]
        c = sizes.concurrency
        seq: dict[str, tuple[Reader, int]] = {"ours_seq": (ours, 1), "raw_seq": (raw_get, 1)}
        conc: dict[str, tuple[Reader, int]] = {"ours_conc": (ours, c), "raw_conc": (raw_get, c)}
        if peer is not None:
            seq["peer_seq"] = (peer_get, 1)
            conc["peer_conc"] = (peer_get, c)
        for work, _ in conc.values():  # warm-up of every client
            await run_workers(500, c, work)
        sync_loop(500)
        loads_before, coalesced_before = stats.loads, stats.coalesced
        peer_loads_before = peer.loads if peer is not None else 0
        for rep in range(sizes.repetitions):
            await _rotated(samples, rep, seq, sizes.reads)
            samples["sync_seq"].append(sync_loop(sizes.reads).rate)
            await _rotated(samples, rep, conc, sizes.reads)
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
        if peer is not None and peer.loads != peer_loads_before:
            raise BenchError(f"{peer.loads - peer_loads_before} timed peer reads missed")
        samples["value_bytes"] = [float(len(stored))]
        samples["coalesced"] = [float(stats.coalesced - coalesced_before)]
        for job_id in ids:
            await cache.invalidate(Kind.job, str(job_id))
            await cache.invalidate(Kind.result, str(job_id))
        await raw.delete(*keys)
        if peer is not None:
            await raw.delete(*(peer.key(job_id) for job_id in ids))
    finally:
        await raw.aclose()
        sync.close()
        await cache.close()
        if peer is not None:
            await peer.close()
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
    peer_missing = missing_peer()
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
                "peer_seq",
                "peer: cashews @cache on the same loader, sequential",
                "reads/s",
                samples["peer_seq"],
                role="peer",
                note="1 coroutine, warm, every call a hit; same JSON body",
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
                "peer_conc",
                f"peer: cashews @cache on the same loader, {c} concurrent",
                "reads/s",
                samples["peer_conc"],
                role="peer",
                note=f"{c} coroutines, cashews' pool sized like ours",
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
                note=f"hits share a GET in flight, no single-flight ({coalesced} joins)",
            ),
        ],
        ratios=[
            Ratio("ours_seq", "raw_seq", TARGET),
            Ratio("ours_conc", "raw_conc", TARGET),
            Ratio("ours_seq", "bench_seq"),
            Ratio("ours_conc", "bench_conc"),
            Ratio("ours_seq", "peer_seq", PEER_TARGET, unit="x"),
            Ratio("ours_conc", "peer_conc", PEER_TARGET, unit="x"),
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
            "single-flight lookup (checked: 0 coalesced); the one-key row: hits of one key "
            "share the GET in flight instead (single-flight is for misses).",
            "The peer (cashews, default serializer settings) stores b'JobOut:' + the same JSON "
            "body under ma:v1:cashews:<id> and decodes it with JobOut.model_validate_json; ours "
            "also checks the breaker, the deadline and the envelope's rank and generation.",
            *([peer_missing] if peer_missing else []),
        ],
    )
