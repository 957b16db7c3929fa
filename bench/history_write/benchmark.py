"""The history write benchmark's run: every variant, the peer and the limits, interleaved."""

from __future__ import annotations

import asyncio
import importlib.util

import psycopg

from app_patch.db import libpq_url
from bench.common import BenchError
from bench.env import BenchEnv
from bench.history_write.job import result_in
from bench.history_write.ours import run_ours
from bench.history_write.pgbench import run_pgbench
from bench.history_write.raw import raw_executemany, raw_one_txn, raw_protocol
from bench.history_write.rows import bench_result
from bench.history_write.sizes import FULL, QUICK, Sizes
from bench.report import BenchResult


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
            samples[via].append(asyncio.run(run_ours(env, db_url, sizes, via)).rate)
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
    return bench_result(samples, sizes, peer_missing)
