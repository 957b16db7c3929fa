"""The timed reads: ours, raw redis-py GETs and the peer, on a warm cache, sides rotating."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import redis
import redis.asyncio as aioredis

from app_patch.cache import Kind, RedisCache, cache_key, encode_body
from app_patch.db import create_engine, create_session_factory
from app_patch.service import HistoryService
from bench.cached_read.peer import CashewsPeer, missing_peer
from bench.cached_read.sizes import KEYS, Sizes
from bench.common import BenchError, Timed, run_workers
from bench.env import BenchEnv
from bench.history_write.job import new_job, result_in

Reader = Callable[[int], Awaitable[None]]


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


async def measure_reads(env: BenchEnv, db_url: str, sizes: Sizes) -> dict[str, list[float]]:
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
