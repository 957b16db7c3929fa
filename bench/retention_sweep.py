"""Retention sweep of N expired uploads vs a raw ``os.unlink`` loop on an identical tree.

Setup per repetition (untimed): N distinct small files written under the layout the file store
uses (``uploads/<sha[0:2]>/<sha[2:4]>/<sha256>``), once per tree, the same way; for ours, N
``media_files`` rows (COPY) whose ``expires_at`` has passed.

* ours: ``Sweeper(engine, storage, RetentionSettings()).sweep(policies=[uploads])``, i.e.
  batches of ``batch_size`` rows locked ``FOR UPDATE SKIP LOCKED``, files unlinked, rows marked
  deleted, one ``retention_events`` row each, one commit per batch;
* limit: ``os.unlink(path)`` for every file of the other tree, in Python, paths precomputed;
* context: ``Storage.remove(key)`` for every file of a third tree (the sweeper's per-file
  path checks and unlink, without any database work).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

from app_patch.db import create_engine
from app_patch.retention import Policy, Sweeper
from app_patch.settings import RetentionSettings, StorageSettings
from app_patch.storage import Storage, upload_key
from bench.common import BenchError, Timed
from bench.env import BenchEnv, libpq
from bench.report import BenchResult, Ratio, Series

NAME = "retention_sweep"
TITLE = "Retention sweep of expired uploads"
TARGET = 0.50
FILE_BYTES = 64


@dataclass(frozen=True)
class Sizes:
    files: int
    repetitions: int


QUICK = Sizes(files=10_000, repetitions=3)
FULL = Sizes(files=100_000, repetitions=3)


def digests(count: int, salt: str) -> list[str]:
    return [hashlib.sha256(f"{salt}:{i}".encode()).hexdigest() for i in range(count)]


def make_tree(root: Path, shas: list[str]) -> list[Path]:
    """Files of FILE_BYTES bytes at their upload keys under ``root``; returns their paths."""
    paths: list[Path] = []
    made: set[str] = set()
    payload = b"x" * FILE_BYTES
    for sha in shas:
        key = upload_key(sha)
        parent = os.path.join(root, "uploads", sha[0:2], sha[2:4])
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        path = root.joinpath(*key.split("/"))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)
        paths.append(path)
    return paths


def insert_expired_rows(db_url: str, shas: list[str]) -> None:
    expired = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    created = expired - dt.timedelta(days=30)
    with psycopg.connect(libpq(db_url)) as conn:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE media_files, retention_events CASCADE")
            with cur.copy(
                "COPY media_files (id, sha256, size_bytes, content_type, original_name,"
                " storage_key, created_at, last_accessed_at, expires_at) FROM STDIN"
            ) as copy:
                for sha in shas:
                    copy.write_row(
                        (
                            uuid.uuid4(),
                            sha,
                            FILE_BYTES,
                            "application/octet-stream",
                            None,
                            upload_key(sha),
                            created,
                            created,
                            expired,
                        )
                    )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE media_files")


def sweep_audit(db_url: str) -> tuple[int, int]:
    with psycopg.connect(libpq(db_url), autocommit=True) as conn:
        live = conn.execute("SELECT count(*) FROM media_files WHERE deleted_at IS NULL").fetchone()
        events = conn.execute("SELECT count(*) FROM retention_events").fetchone()
    return (int(live[0]) if live else -1, int(events[0]) if events else -1)


async def sweep(env: BenchEnv, db_url: str, root: Path) -> tuple[Timed, int]:
    settings = env.settings(db_url, storage_root=root)
    engine = create_engine(settings.db, db_url)
    try:
        storage = await Storage.open(settings.storage)
        sweeper = Sweeper(engine, storage, RetentionSettings())
        async with engine.connect():  # one connection opened before timing, like the others
            pass
        started = time.perf_counter()
        report = await sweeper.sweep(policies=[Policy.uploads])
        elapsed = time.perf_counter() - started
    finally:
        await engine.dispose()
    if report.error_count:
        raise BenchError(f"sweep reported errors: {report.errors[:3]}")
    return Timed(elapsed, report.policies[Policy.uploads].objects), report.total_objects


def raw_unlink(paths: list[Path]) -> Timed:
    started = time.perf_counter()
    for path in paths:
        os.unlink(path)
    return Timed(time.perf_counter() - started, len(paths))


def storage_remove(root: Path, shas: list[str]) -> Timed:
    storage = Storage(StorageSettings(root=root))
    keys = [upload_key(sha) for sha in shas]
    started = time.perf_counter()
    for key in keys:
        storage.remove(key)
    return Timed(time.perf_counter() - started, len(keys))


def leftover_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root / "uploads"))


def run(env: BenchEnv, quick: bool) -> BenchResult:
    sizes = QUICK if quick else FULL
    db_url = env.create_database("retention")
    ours: list[float] = []
    raw: list[float] = []
    remove: list[float] = []
    setup_s: list[float] = []
    for rep in range(sizes.repetitions):
        base = env.scratch_dir(f"sweep{rep}")
        started = time.perf_counter()
        shas_ours = digests(sizes.files, f"ours{rep}")
        shas_raw = digests(sizes.files, f"raw{rep}")
        shas_rm = digests(sizes.files, f"remove{rep}")
        make_tree(base / "ours", shas_ours)
        raw_paths = make_tree(base / "raw", shas_raw)
        make_tree(base / "remove", shas_rm)
        insert_expired_rows(db_url, shas_ours)
        setup_s.append(time.perf_counter() - started)

        def measure_ours(base: Path = base, shas: list[str] = shas_ours) -> None:
            timed, total = asyncio.run(sweep(env, db_url, base / "ours"))
            if total != len(shas) or leftover_files(base / "ours"):
                raise BenchError(f"sweep deleted {total} of {len(shas)} expired uploads")
            ours.append(timed.rate)

        if rep % 2 == 0:  # alternate the order so neither side always runs first
            measure_ours()
            raw.append(raw_unlink(raw_paths).rate)
        else:
            raw.append(raw_unlink(raw_paths).rate)
            measure_ours()
        remove.append(storage_remove(base / "remove", shas_rm).rate)
        live, events = sweep_audit(db_url)
        if live != 0 or events != sizes.files:
            raise BenchError(f"after the sweep: {live} live rows, {events} audit rows")
    env.drop_database(db_url)
    return BenchResult(
        name=NAME,
        title=TITLE,
        series=[
            Series(
                "ours",
                "ours: Sweeper (uploads policy)",
                "files/s",
                ours,
                note="rows locked, files unlinked, rows marked, audit rows, per batch",
            ),
            Series(
                "raw",
                "raw os.unlink loop",
                "files/s",
                raw,
                role="limit",
                note="identical tree, precomputed paths",
            ),
            Series(
                "remove",
                "Storage.remove(key) loop, no DB",
                "files/s",
                remove,
                role="context",
                note="the sweeper's per-file path checks + unlink",
            ),
            Series(
                "setup",
                "setup: 3 trees + COPY of the rows",
                "s",
                setup_s,
                role="context",
                better="lower",
                note="untimed in the figures above",
            ),
        ],
        ratios=[Ratio("ours", "raw", TARGET), Ratio("remove", "raw")],
        params={
            "files": sizes.files,
            "file_bytes": FILE_BYTES,
            "batch_size": RetentionSettings().batch_size,
            "repetitions": sizes.repetitions,
        },
        notes=[
            "Every file is expired; the sweep must delete all of them, leave no live row and "
            "write one retention_events row each (checked after every repetition).",
        ],
    )
