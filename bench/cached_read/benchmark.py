"""The cached read benchmark's run: the timed reads, then redis-benchmark at 1 and 50 clients."""

from __future__ import annotations

import asyncio

from bench.cached_read.measure import measure_reads
from bench.cached_read.peer import missing_peer
from bench.cached_read.redis_benchmark import cleanup_benchmark_key, redis_benchmark
from bench.cached_read.rows import bench_result
from bench.cached_read.sizes import FULL, QUICK
from bench.env import BenchEnv
from bench.report import BenchResult


def run(env: BenchEnv, quick: bool) -> BenchResult:
    sizes = QUICK if quick else FULL
    peer_missing = missing_peer()
    db_url = env.create_database("cache")
    samples = asyncio.run(measure_reads(env, db_url, sizes))
    value_bytes = int(samples.pop("value_bytes")[0])
    coalesced = int(samples.pop("coalesced")[0])
    bench_seq: list[float] = []
    bench_conc: list[float] = []
    try:
        for _ in range(sizes.repetitions):
            bench_seq.append(redis_benchmark(env, sizes, value_bytes, 1))
            bench_conc.append(redis_benchmark(env, sizes, value_bytes, 50))
    finally:
        cleanup_benchmark_key(env)
    env.drop_database(db_url)
    samples |= {"bench_seq": bench_seq, "bench_conc": bench_conc}
    return bench_result(samples, sizes, value_bytes, coalesced, peer_missing)
