"""Retention sweep of N expired uploads vs a raw ``os.unlink`` loop on an identical tree.

Setup before every measurement (untimed): a fresh tree of N distinct small files under the
layout the file store uses (``uploads/<sha[0:2]>/<sha[2:4]>/<sha256>``), made the same way for
every side; for ours, N ``media_files`` rows (COPY) whose ``expires_at`` has passed.

* ours: ``Sweeper(engine, storage, RetentionSettings()).sweep(policies=[uploads])``, i.e.
  batches of ``batch_size`` rows: key locks, rows locked ``FOR UPDATE SKIP LOCKED``, files
  unlinked, then one statement marking the rows deleted and writing their ``retention_events``
  rows, one commit per batch;
* limit: ``os.unlink(path)`` for every file of the other tree, in Python, paths precomputed;
* context: ``Storage.remove(key)`` for every file of a third tree (the per-file key check and
  unlink without any database work; the sweeper also skips re-checking a directory within a
  batch).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

from app_patch import store_identity
from app_patch.db import create_engine, libpq_url
from app_patch.retention import Policy, Sweeper
from app_patch.settings import RetentionSettings, StorageSettings
from app_patch.storage import Storage, upload_key
from bench.common import BenchError, Timed
from bench.env import BenchEnv, filesystem_of
from bench.report import BenchResult, Ratio, Series

NAME = "retention_sweep"
TITLE = "Retention sweep of expired uploads"
TARGET_DISK = 0.60
TARGET_TMPFS = 0.30  # no disk below: the database's work per row weighs fully here
FILE_BYTES = 64


@dataclass(frozen=True)
class Sizes:
    files: int
    repetitions: int


QUICK = Sizes(files=2_000, repetitions=3)
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
    with psycopg.connect(libpq_url(db_url)) as conn:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE media_files, retention_events, store_identity CASCADE")
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
    with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
        live = conn.execute("SELECT count(*) FROM media_files WHERE deleted_at IS NULL").fetchone()
        events = conn.execute("SELECT count(*) FROM retention_events").fetchone()
    return (int(live[0]) if live else -1, int(events[0]) if events else -1)


async def sweep(env: BenchEnv, db_url: str, root: Path) -> tuple[Timed, int]:
    settings = env.settings(db_url, storage_root=root)
    engine = create_engine(settings.db, db_url)
    try:
        storage = await Storage.open(settings.storage)
        async with engine.begin() as conn:  # the root is this database's, as the API records
            await store_identity.check_for_writer(conn, storage.root)
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


DISK_DIR_ENV = "MA_BENCH_DISK_DIR"


def disk_dir(env: BenchEnv) -> Path:
    """Where the on-disk trees go: ``$MA_BENCH_DISK_DIR``, else /var/tmp, else the scratch dir.

    Not /tmp by default: creating and deleting hundreds of thousands of files leaves ext4's
    allocator slow around that region for a while (file creation measured dropping from ~30k/s
    to ~1k/s), and /tmp is where everyone else's tests make their temp dirs.
    """
    configured = os.environ.get(DISK_DIR_ENV)
    for candidate in (configured, "/var/tmp"):
        usable = candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK)
        if usable and filesystem_of(Path(str(candidate))) not in {"tmpfs", "ramfs"}:
            return Path(str(candidate))
    return env.root


def tmpfs_dir() -> Path | None:
    """/dev/shm when it is a writable tmpfs (no disk below: the CPU cost alone)."""
    shm = Path("/dev/shm")
    if filesystem_of(shm) != "tmpfs" or not os.access(shm, os.W_OK):
        return None
    return shm


def run(env: BenchEnv, quick: bool) -> BenchResult:
    sizes = QUICK if quick else FULL
    db_url = env.create_database("retention")
    shm = tmpfs_dir()
    disk = Path(tempfile.mkdtemp(prefix="ma-bench-", dir=disk_dir(env)))
    places: list[tuple[str, Path, list[str]]] = [("disk", disk, ["ours", "raw"])]
    if shm is not None:
        places.append(("tmpfs", Path(tempfile.mkdtemp(prefix="ma-bench-", dir=shm)), SIDES))
    samples: dict[str, list[float]] = {}
    try:
        for rep in range(sizes.repetitions):
            for place, parent, sides in places:
                turn = rep % len(sides)  # the order rotates between repetitions
                for side in sides[turn:] + sides[:turn]:
                    rate, setup = _measure(env, db_url, parent, side, f"{place}{side}{rep}", sizes)
                    samples.setdefault(f"{side}_{place}", []).append(rate)
                    samples.setdefault(f"setup_{place}", []).append(setup)
    finally:
        for _, parent, _ in places:
            shutil.rmtree(parent, ignore_errors=True)
    env.drop_database(db_url)
    series = [
        Series("ours_disk", "ours: Sweeper (uploads policy), disk", "files/s",
               samples["ours_disk"],
               note="per batch: locks, unlink, one mark + audit statement, commit"),
        Series("raw_disk", "raw os.unlink loop, disk", "files/s", samples["raw_disk"],
               role="limit", note="identical fresh tree, precomputed paths"),
    ]  # fmt: skip
    ratios = [Ratio("ours_disk", "raw_disk", TARGET_DISK)]
    if shm is not None:
        series += [
            Series("ours_tmpfs", "ours: Sweeper (uploads policy), tmpfs", "files/s",
                   samples["ours_tmpfs"], note="the same, files on /dev/shm"),
            Series("raw_tmpfs", "raw os.unlink loop, tmpfs", "files/s", samples["raw_tmpfs"],
                   role="limit", note="CPU cost of unlink alone"),
            Series("remove_tmpfs", "Storage.remove(key) loop, no DB, tmpfs", "files/s",
                   samples["remove_tmpfs"], role="context",
                   note="per-file key check (no realpath) + unlink"),
        ]  # fmt: skip
        ratios += [
            Ratio("ours_tmpfs", "raw_tmpfs", TARGET_TMPFS),
            Ratio("remove_tmpfs", "raw_tmpfs"),
        ]
    for place, _, _ in places:
        series.append(
            Series(
                f"setup_{place}",
                f"setup per tree ({place}), untimed",
                "s",
                samples[f"setup_{place}"],
                role="context",
                better="lower",
                note="make the tree (+ COPY the rows for ours), sync",
            )
        )
    params = {
        "files": sizes.files,
        "file_bytes": FILE_BYTES,
        "batch_size": RetentionSettings().batch_size,
        "repetitions": sizes.repetitions,
        "disk_dir": f"{disk_dir(env)} ({filesystem_of(disk)})",
    }
    return BenchResult(
        name=NAME,
        title=TITLE,
        series=series,
        ratios=ratios,
        params=params,
        notes=[
            "Every file is expired; the sweep must delete all of them, leave no live row and "
            "write one retention_events row each (checked after every repetition).",
            "Each measurement deletes its own fresh tree, made the same way just before it; "
            "the filesystem is synced (os.sync) after each setup and each cleanup. On this VM "
            "the disk figures swing with the host's I/O state (unlink of the same tree "
            "measured at ~90k/s and at ~16k/s on different occasions, both sides alike), so "
            "the tmpfs pair shows the CPU cost of the sweeper against the CPU cost of unlink.",
            "PostgreSQL's files stay on the scratch disk in both cases.",
        ],
    )


SIDES = ["ours", "raw", "remove"]


def _measure(
    env: BenchEnv, db_url: str, parent: Path, side: str, salt: str, sizes: Sizes
) -> tuple[float, float]:
    """(files/s, setup seconds) of one side on a fresh tree under ``parent``."""
    base = parent / f"tree-{salt}"
    base.mkdir(parents=True)
    try:
        started = time.perf_counter()
        shas = digests(sizes.files, salt)
        paths = make_tree(base, shas)
        if side == "ours":
            insert_expired_rows(db_url, shas)
        os.sync()  # flush the setup's dirty metadata now, not during the timed part
        setup = time.perf_counter() - started
        if side == "ours":
            timed, total = asyncio.run(sweep(env, db_url, base))
            live, events = sweep_audit(db_url)
            if total != len(shas) or live != 0 or events != len(shas):
                raise BenchError(
                    f"sweep deleted {total} of {len(shas)} expired uploads; "
                    f"{live} rows still live, {events} audit rows"
                )
        elif side == "raw":
            timed = raw_unlink(paths)
        else:
            timed = storage_remove(base, shas)
        if leftover_files(base):
            raise BenchError(f"{side}: files left behind")
        return timed.rate, setup
    finally:
        shutil.rmtree(base, ignore_errors=True)  # the emptied directories (untimed)
        os.sync()
