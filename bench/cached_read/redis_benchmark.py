"""The ``redis-benchmark`` limit: the server's GET rate from C clients, same value size."""

from __future__ import annotations

import redis

from bench.cached_read.sizes import Sizes
from bench.common import BenchError, run_timed, tail
from bench.env import BenchEnv
from bench.parsers import redis_benchmark_rps

REDIS_BENCHMARK = "redis-benchmark"


def redis_benchmark(env: BenchEnv, sizes: Sizes, value_bytes: int, clients: int) -> float:
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


def cleanup_benchmark_key(env: BenchEnv) -> None:
    client = redis.Redis.from_url(env.redis_url)
    try:
        client.delete("key:__rand_int__")  # the key redis-benchmark's SET/GET use
    finally:
        client.close()
