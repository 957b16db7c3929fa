"""Per size: a seeded database and storage root, its timed queries and its timed sweeps."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import psycopg

from app_patch import store_identity
from app_patch.db import create_engine, libpq_url
from app_patch.retention import Policy, Sweeper
from app_patch.settings import RetentionSettings
from app_patch.storage import Storage
from bench.common import BenchError
from bench.env import BenchEnv
from bench.retention_sweep import disk_dir, leftover_files, make_tree, sweep
from bench.scale_curve.plans import PlanRecorder, plan_summary
from bench.scale_curve.queries import deep_cursor, time_queries
from bench.scale_curve.seed import seed
from bench.scale_curve.sizes import History, Sizes, size_label

TABLES = ("analysis_jobs", "analysis_results", "media_files")


def relation_bytes(libpq_url: str) -> dict[str, tuple[int, int, int]]:
    with psycopg.connect(libpq_url) as conn:
        rows = conn.execute(
            "SELECT relname, pg_total_relation_size(oid), pg_relation_size(oid),"
            " pg_indexes_size(oid) FROM pg_class WHERE relname = ANY(%s)",
            (list(TABLES),),
        ).fetchall()
    return {str(name): (int(total), int(heap), int(indexes)) for name, total, heap, indexes in rows}


def restore_expired(libpq_url: str) -> None:
    """Make the rows the last sweep deleted live and expired again; drop their audit rows."""
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE media_files m SET deleted_at = NULL FROM retention_events e"
            " WHERE e.object_type = 'media_file' AND e.object_id = m.id::text"
        )
        conn.execute("DELETE FROM retention_events")
        conn.execute("VACUUM ANALYZE media_files, retention_events")


async def sweep_plans(env: BenchEnv, db_url: str, root: Path) -> list[str]:
    """The plans of the sweep's first candidate and count queries (an untimed sweep)."""
    settings = env.settings(db_url, storage_root=root)
    engine = create_engine(settings.db, db_url)
    try:
        storage = await Storage.open(settings.storage)
        with PlanRecorder(engine) as recorder:
            await Sweeper(engine, storage, RetentionSettings()).sweep(policies=[Policy.uploads])
    finally:
        await engine.dispose()
    media = recorder.on("media_files")
    return [plan_summary(doc) for doc in media[:3]]


def seed_size(env: BenchEnv, jobs: int) -> History:
    db_url = env.create_database(f"scale{size_label(jobs).lower()}")
    root = Path(tempfile.mkdtemp(prefix="ma-bench-scale-", dir=disk_dir(env)))
    started = time.perf_counter()
    history = History(jobs, db_url, root, seed(libpq_url(db_url), jobs))
    history.seeded.seconds = time.perf_counter() - started
    history.cursor, history.deep_page = deep_cursor(history.url, jobs)
    history.relation_bytes = relation_bytes(history.url)
    asyncio.run(adopt_root(env, db_url, root))
    return history


async def adopt_root(env: BenchEnv, db_url: str, root: Path) -> None:
    """Record ``root`` as the database's store (the seeded live rows' files are not there, so
    the writer's own claim would rightly refuse it)."""
    engine = create_engine(env.settings(db_url).db, db_url)
    try:
        async with engine.begin() as conn:
            await store_identity.claim(conn, store_identity.ensure_marker(root))
    finally:
        await engine.dispose()


def sweep_once(env: BenchEnv, history: History, *, timed: bool) -> None:
    """Expired rows live again (after the first time), their files made, then one sweep:
    timed, or untimed with its plans recorded."""
    if history.sweep_rates or "sweep" in history.plans:
        restore_expired(history.url)
    make_tree(history.root, history.seeded.expired_shas)
    os.sync()  # the tree's dirty metadata is flushed now, not during the sweep
    if not timed:
        history.plans["sweep"] = asyncio.run(sweep_plans(env, history.db_url, history.root))
        return
    result, total = asyncio.run(sweep(env, history.db_url, history.root))
    expected = len(history.seeded.expired_shas)
    if total != expected or leftover_files(history.root):
        raise BenchError(f"sweep deleted {total} of {expected} expired uploads")
    history.sweep_rates.append(result.rate)


def measure(env: BenchEnv, sizes: Sizes) -> list[History]:
    histories: list[History] = []
    try:
        for jobs in sizes.jobs:
            histories.append(seed_size(env, jobs))
        asyncio.run(time_queries(env, histories, sizes))
        for rep in range(sizes.sweeps):
            turn = rep % len(histories)
            for history in histories[turn:] + histories[:turn]:
                sweep_once(env, history, timed=True)
        sweep_once(env, histories[-1], timed=False)
        return histories
    finally:
        for history in histories:
            shutil.rmtree(history.root, ignore_errors=True)
            env.drop_database(history.db_url)
