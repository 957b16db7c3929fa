"""The API load benchmark's run: both servers, the seeding, the alternating repetitions."""

from __future__ import annotations

import json
from typing import Any

from bench.api_load.driver import run_driver, seed_jobs
from bench.api_load.rows import Measured, bench_result
from bench.api_load.server import servers, timeout_counters
from bench.api_load.sizes import FULL, QUICK
from bench.api_server import BARE_BODY_ENV
from bench.env import BenchEnv
from bench.report import BenchResult


def run(env: BenchEnv, quick: bool) -> BenchResult:
    sizes = QUICK if quick else FULL
    db_url = env.create_database("api")
    ours: list[dict[str, Any]] = []
    limit: list[dict[str, Any]] = []
    stats_before: dict[str, Any] = {}
    stats_after: dict[str, Any] = {}
    metrics_timeouts: dict[str, float] = {}
    pool_peaks: list[float] = []
    with servers(env, db_url) as (real, bare, scratch):
        ids, sample = seed_jobs(real, sizes.seeds)
        ids_file = scratch / "ids.json"
        ids_file.write_text(json.dumps(ids), encoding="utf-8")
        bare.env[BARE_BODY_ENV] = sample.decode()
        bare.start()
        stats_before = real.stats()
        for rep in range(sizes.repetitions):
            order = [(real, ours), (bare, limit)]
            for server, sink in order if rep % 2 == 0 else reversed(order):
                before = server.stats(reset_peak=True) if server is real else {}
                sink.append(run_driver(server, ids_file, sizes))
                if server is real:
                    after = server.stats()
                    pool_peaks.append(float(after.get("pool_peak_checked_out", 0)))
                    sink[-1]["pool_timeouts"] = after["pool_timeouts"] - before["pool_timeouts"]
        stats_after = real.stats()
        metrics_timeouts = timeout_counters(real.metrics_text())
        server_log = real.log_tail()
    env.drop_database(db_url)
    measured = Measured(ours, limit, stats_before, stats_after, metrics_timeouts, pool_peaks)
    return bench_result(sizes, measured, server_log)
