"""History scale curve: the same queries on 10k, 100k and 1M jobs.

Per size, a fresh database on the benchmark's server, migrated by ``app_patch.migrate``, then
seeded in bulk with COPY (``seed``) and ANALYZEd: a year of history, written roughly in
creation order as the API writes it. Media files are shared by several jobs (1 + a geometric
number, 3 on average); a job's analysis type and status follow fixed weights; media whose
last access is more than ``uploads_days`` ago were swept before (``deleted_at`` set), except
10 % of all media rows, live and just expired (as if the sweeper had been off for a day).

Timed, through the app's own functions (the repository's, on the engine and session factory
the API uses; no Redis, so every read reaches PostgreSQL):

* ``newest``: ``list_history`` with the API's default page size (50);
* ``deep``: ``list_history`` with the keyset cursor of the row ending page 1,000, built
  directly (the cursor the API would have issued there); with fewer than 2,000 pages, the
  middle page of the history (keyset cost does not depend on depth);
* ``filtered``: ``list_history`` with ``status=failed`` and a random 30-day window;
* ``get``: ``get_job`` of a random existing id (``GET /analyses/{id}`` with the cache off);
* ``sweep``: ``Sweeper.sweep(policies=[uploads])`` over the 10 % expired media rows, whose
  files are created (64 bytes each, outside the timing) in a fresh storage root.

Targets: every history query's p50 at the largest size within 2 x its p50 at 10k, and the
sweep's files/s at the largest size at least 75 % of its rate at 10k. The plan of each query at
the largest size (EXPLAIN ANALYZE of the SQL the function sent) is in the notes, with the
table and index sizes per million jobs.
"""

from __future__ import annotations

import array
import asyncio
import datetime as dt
import functools
import hashlib
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app_patch import repository as repo
from app_patch import store_identity
from app_patch.db import create_engine, create_session_factory, libpq_url
from app_patch.models import JobStatus
from app_patch.retention import Policy, Sweeper
from app_patch.schemas import HistoryFilter, encode_cursor
from app_patch.settings import RetentionSettings
from app_patch.storage import Storage, upload_key
from bench.common import BenchError
from bench.env import BenchEnv
from bench.report import BenchResult, Ratio, Series
from bench.retention_sweep import disk_dir, leftover_files, make_tree, sweep

YEAR_S = 365 * 86_400.0
ANALYSIS_TYPES = (("basic", 50), ("faces", 20), ("ocr", 15), ("transcript", 10), ("nsfw", 5))
FAILED_SHARE = 0.08
EXPIRED_SHARE = 0.10
MEDIA_BYTES = 64  # the size of the files the sweep deletes
_COPY_CHUNK = 1 << 20
_ID_STEP = 0x9E3779B97F4A7C15F39CC0605CEDC835  # odd, ~2^128/phi: a scrambled, unique sequence
_SALTS = {"job": 0x1F, "result": 0x2E, "media": 0x3D}
_MASK = (1 << 128) - 1
_VERSION_CLEAR = _MASK ^ (0xF000 << 64) ^ (0xC000 << 48)
_VERSION_SET = 0x4000 << 64 | 0x8000 << 48


def seq_uuid_text(kind: str, index: int) -> str:
    """The id of the ``index``-th row of a kind: distinct, spread like uuid4, recomputable."""
    value = ((index << 8 | _SALTS[kind]) * _ID_STEP) & _MASK
    value = value & _VERSION_CLEAR | _VERSION_SET  # what uuid.UUID(int=..., version=4) does
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def seq_uuid(kind: str, index: int) -> uuid.UUID:
    return uuid.UUID(seq_uuid_text(kind, index))


def media_sha(index: int) -> str:
    return hashlib.sha256(f"scale-curve:{index}".encode()).hexdigest()


@functools.cache
def _day(days: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=days)).isoformat()


def _ts(epoch: float) -> str:
    """COPY text of a UTC timestamp (several times faster than datetime.isoformat)."""
    days, rest = divmod(epoch, 86_400.0)
    seconds, micros = divmod(int(rest * 1_000_000), 1_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return f"{_day(int(days))} {hours:02d}:{minutes:02d}:{seconds:02d}.{micros:06d}+00"


@dataclass
class Seeded:
    """What the queries need to know about a seeded history."""

    jobs: int
    results: int
    media: int
    media_live: int
    expired_shas: list[str]
    now: float  # epoch seconds the history ends at
    seconds: float = 0.0


class _History:
    """A year of history as compact arrays (a million jobs fit in ~50 MB)."""

    def __init__(
        self, jobs: int, now: float, rng: random.Random, uploads_days: float, expired: float
    ) -> None:
        self.now = now
        self.rng = rng
        self.ttl = uploads_days * 86_400
        self.job_created = array.array("d")
        self.job_media = array.array("l")
        self.media_rows: list[tuple[float, float, int]] = []  # created, last access, state
        counts: list[int] = []  # each media file used by 1 + geometric jobs, 2.5 on average
        total = 0
        while total < jobs:
            counts.append(min(1 + int(rng.expovariate(1 / 2)), jobs - total))
            total += counts[-1]
        starts = sorted(now - rng.random() * YEAR_S for _ in counts)  # uploads over the year
        for created, count in zip(starts, counts, strict=True):
            window = rng.random() * 60 * 86_400
            last = created
            for _ in range(count):
                at = min(now - 1.0, created + rng.random() * window)
                last = max(last, at)
                self.job_created.append(at)
                self.job_media.append(len(self.media_rows))
            state = 2 if rng.random() < expired else (0 if last + self.ttl > now else 1)
            self.media_rows.append((created, last, state))  # 0 live, 1 swept, 2 expired
        self.order = sorted(range(len(self.job_created)), key=self.job_created.__getitem__)
        self.succeeded = bytearray(len(self.order))

    def media_lines(self) -> Iterator[str]:
        rng, now = self.rng, self.now
        for i, (created, last, state) in enumerate(self.media_rows):
            sha = media_sha(i)
            expires = now - 60 - rng.random() * 86_400 if state == 2 else last + self.ttl
            if state == 0:  # not one more expiry while the benchmark runs
                expires = max(expires, now + 86_400)
            deleted = _ts(expires + rng.random() * 86_400) if state == 1 else "\\N"
            kind = "image/jpeg" if i % 3 else "video/mp4"
            yield (
                f"{seq_uuid_text('media', i)}\t{sha}\t{MEDIA_BYTES}\t{kind}\tupload-{i}.bin\t"
                f"{upload_key(sha)}\t{_ts(created)}\t{_ts(last)}\t{_ts(expires)}\t{deleted}\n"
            )

    def job_lines(self) -> Iterator[str]:
        rng, now = self.rng, self.now
        types = [name for name, weight in ANALYSIS_TYPES for _ in range(weight)]
        for position, j in enumerate(self.order):
            created = self.job_created[j]
            media = seq_uuid_text("media", self.job_media[j])
            kind = types[int(rng.random() * len(types))]
            finished: str | float = "\\N"
            error = "\\N"
            if now - created < 900:  # the last quarter of an hour: some still in flight
                status = "queued" if rng.random() < 0.5 else "running"
            elif rng.random() < FAILED_SHARE:
                status, error = "failed", "engine error: decoder gave up"
                finished = _ts(created + 0.2 + rng.random() * 5)
            else:
                status = "succeeded"
                finished = _ts(created + 0.2 + rng.random() * 5)
                self.succeeded[position] = 1
            idem, fingerprint = "\\N", "\\N"
            if position % 3 == 0:
                idem, fingerprint = f"scale-{position}", f"{position:064x}"
            started = "\\N" if status == "queued" else _ts(created)
            attempts = 0 if status == "queued" else 1
            yield (
                f"{seq_uuid_text('job', position)}\t{media}\t{kind}\t{status}\t"
                f'{{"lang": "en", "detail": {position % 4}}}\tclient-{position % 50}\t'
                f"{idem}\t{fingerprint}\t{_ts(created)}\t{started}\t{finished}\t{error}\t"
                f"{attempts}\n"
            )

    def result_lines(self) -> Iterator[str]:
        rng = self.rng
        for position, j in enumerate(self.order):
            if not self.succeeded[position]:
                continue
            took = 200 + rng.random() * 5000
            finished = _ts(self.job_created[j] + took / 1000)
            labels = int(rng.random() * 12)
            yield (
                f"{seq_uuid_text('result', position)}\t{seq_uuid_text('job', position)}\t"
                f'{{"labels": {labels}, "score": {rng.random():.4f}, "model": "ref-1"}}\t'
                f"{labels} labels\tmedia-analysis-reference\t1.0.0\t{took:.3f}\t{finished}\n"
            )


def _copy(cur: psycopg.Cursor[tuple[object, ...]], statement: str, lines: Iterator[str]) -> int:
    count = 0
    with cur.copy(statement) as copy:
        buffer: list[str] = []
        size = 0
        for line in lines:
            buffer.append(line)
            size += len(line)
            count += 1
            if size >= _COPY_CHUNK:
                copy.write("".join(buffer))
                buffer, size = [], 0
        if buffer:
            copy.write("".join(buffer))
    return count


def seed(
    libpq_url: str, jobs: int, *, expired_share: float = EXPIRED_SHARE, seed: int = 1
) -> Seeded:
    """COPY a year of history of ``jobs`` jobs into the (migrated, empty) database; ANALYZE.

    ``expired_share`` of the media rows are live and just expired (the sweep's work)."""
    ended = dt.datetime.now(dt.UTC).timestamp()
    uploads_days = RetentionSettings().uploads_days
    history = _History(jobs, ended, random.Random(seed), uploads_days, expired_share)
    with psycopg.connect(libpq_url) as conn:
        with conn.cursor() as cur:
            media = _copy(
                cur,
                "COPY media_files (id, sha256, size_bytes, content_type, original_name,"
                " storage_key, created_at, last_accessed_at, expires_at, deleted_at) FROM STDIN",
                history.media_lines(),
            )
            copied = _copy(
                cur,
                "COPY analysis_jobs (id, media_file_id, analysis_type, status, params, client_ref,"
                " idempotency_key, request_fingerprint, created_at, started_at, finished_at,"
                " error, attempts) FROM STDIN",
                history.job_lines(),
            )
            results = _copy(
                cur,
                "COPY analysis_results (id, job_id, result, summary, engine_name,"
                " engine_version, duration_ms, created_at) FROM STDIN",
                history.result_lines(),
            )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE media_files, analysis_jobs, analysis_results")
    states = [state for _, _, state in history.media_rows]
    return Seeded(
        jobs=copied,
        results=results,
        media=media,
        media_live=states.count(0) + states.count(2),
        expired_shas=[media_sha(i) for i, state in enumerate(states) if state == 2],
        now=ended,
    )


# ---------------------------------------------------------------- plans


class PlanRecorder:
    """EXPLAIN (FORMAT JSON) of every SELECT an engine sends, run on the same connection just
    before the statement itself, with its parameters: the plan of exactly what the app sent.

    ``analyze=True`` runs the statement a second time (EXPLAIN ANALYZE): never on a timed call.
    """

    def __init__(self, engine: AsyncEngine, *, analyze: bool = False) -> None:
        self.engine = engine.sync_engine
        self.options = "FORMAT JSON, ANALYZE, BUFFERS" if analyze else "FORMAT JSON"
        self.plans: list[tuple[str, dict[str, Any]]] = []  # (statement, top plan node)

    def __enter__(self) -> PlanRecorder:
        event.listen(self.engine, "before_cursor_execute", self._explain)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._explain)

    def _explain(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if executemany or not statement.lstrip().upper().startswith("SELECT"):
            return
        explain = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            explain.execute(f"EXPLAIN ({self.options}) {statement}", parameters)
            row = explain.fetchone()
        finally:
            explain.close()
        assert row is not None
        self.plans.append((statement, row[0][0]))  # one row: a JSON array of one document

    def on(self, table: str) -> list[dict[str, Any]]:
        """The plans of the statements that read ``table`` (``FROM <table>``)."""
        return [plan for statement, plan in self.plans if f"FROM {table}" in statement]


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan (``plan`` is the document's ``Plan``)."""
    yield plan
    for child in plan.get("Plans", ()):
        yield from plan_nodes(child)


def plan_text(plan: dict[str, Any]) -> str:
    """One line: ``Limit > Index Scan using ix_... on analysis_jobs``."""
    label = plan["Node Type"]
    if "Index Name" in plan:
        label += f" using {plan['Index Name']}"
    if "Relation Name" in plan:
        label += f" on {plan['Relation Name']}"
    if "Index Cond" in plan:
        cond = plan["Index Cond"]
        label += f" cond {cond if len(cond) <= 70 else cond[:67] + '...'}"
    if "Filter" in plan:
        label += " + filter"
    children = [plan_text(child) for child in plan.get("Plans", ())]
    if len(children) == 1:
        return f"{label} > {children[0]}"
    return f"{label} ({'; '.join(children)})" if children else label


def plan_summary(document: dict[str, Any]) -> str:
    """``plan_text`` plus, for EXPLAIN ANALYZE, rows, time and buffers."""
    plan = document["Plan"]
    text = plan_text(plan)
    if "Execution Time" in document:
        hit, read = plan.get("Shared Hit Blocks", 0), plan.get("Shared Read Blocks", 0)
        text += (
            f" [{plan.get('Actual Rows', '?')} rows, {document['Execution Time']:.2f} ms,"
            f" buffers hit {hit} read {read}]"
        )
    return text


# ---------------------------------------------------------------- the benchmark

NAME = "scale_curve"
TITLE = "History scale curve (queries and sweep vs history size)"
HISTORY_TARGET = 0.5  # p50 at the largest size at most 2 x the p50 at 10k
SWEEP_TARGET = 0.75  # files/s at the largest size at least 75 % of the rate at 10k
PAGE = 50  # the API's default page size (GET /analyses)
DEEP_PAGE = 1_000
WINDOW = dt.timedelta(days=30)
TABLES = ("analysis_jobs", "analysis_results", "media_files")


@dataclass(frozen=True)
class Sizes:
    jobs: tuple[int, ...]
    calls: int  # timed calls per query and size
    sweeps: int  # timed sweeps per size


QUICK = Sizes(jobs=(10_000, 50_000), calls=60, sweeps=2)
FULL = Sizes(jobs=(10_000, 100_000, 1_000_000), calls=300, sweeps=3)


@dataclass(frozen=True)
class Query:
    key: str
    label: str
    tables: tuple[str, ...]  # whose plans go into the notes


QUERIES = (
    Query("newest", "newest page", ("analysis_jobs", "analysis_results")),
    Query("deep", f"page {DEEP_PAGE:,} deep (keyset)", ("analysis_jobs", "analysis_results")),
    Query("filtered", "status=failed + 30-day range", ("analysis_jobs", "analysis_results")),
    Query("get", "get_job(random id)", ("analysis_jobs", "analysis_results")),
)
Call = Callable[[AsyncSession], Awaitable[object]]


def size_label(jobs: int) -> str:
    if jobs >= 1_000_000 and jobs % 1_000_000 == 0:
        return f"{jobs // 1_000_000}M"
    return f"{jobs // 1000}k" if jobs % 1000 == 0 else str(jobs)


@dataclass
class History:
    """One seeded size: its database, storage root and what was measured on it."""

    jobs: int
    db_url: str
    root: Path
    seeded: Seeded
    cursor: str = ""
    deep_page: int = 0
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    sweep_rates: list[float] = field(default_factory=list)
    relation_bytes: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    plans: dict[str, list[str]] = field(default_factory=dict)  # query -> one line a statement

    @property
    def label(self) -> str:
        return size_label(self.jobs)

    @property
    def url(self) -> str:
        return libpq_url(self.db_url)


def deep_cursor(libpq_url: str, jobs: int) -> tuple[str, int]:
    """The cursor the API issues at the end of page ``DEEP_PAGE`` (or of the middle page when
    the history is shorter than twice that), read straight from the index order."""
    page = min(DEEP_PAGE, max(1, jobs // PAGE // 2))
    with psycopg.connect(libpq_url) as conn:
        row = conn.execute(
            "SELECT created_at, id FROM analysis_jobs ORDER BY created_at DESC, id DESC"
            " OFFSET %s LIMIT 1",
            (page * PAGE - 1,),
        ).fetchone()
    if row is None:
        raise BenchError(f"no row at page {page}")
    return encode_cursor(row[0], row[1]), page + 1


def calls(seeded: Seeded, cursor: str, rng: random.Random) -> dict[str, Call]:
    """One call of each query; every call draws its own window or id."""
    now = dt.datetime.fromtimestamp(seeded.now, dt.UTC)

    async def newest(session: AsyncSession) -> object:
        return await repo.list_history(session, limit=PAGE)

    async def deep(session: AsyncSession) -> object:
        page = await repo.list_history(session, limit=PAGE, cursor=cursor)
        if len(page.items) != PAGE:
            raise BenchError(f"deep page has {len(page.items)} jobs")
        return page

    async def filtered(session: AsyncSession) -> object:
        start = now - dt.timedelta(days=30 + rng.random() * 330)
        window = HistoryFilter(
            status=JobStatus.failed, created_from=start, created_to=start + WINDOW
        )
        return await repo.list_history(session, limit=PAGE, filters=window)

    async def get(session: AsyncSession) -> object:
        job = await repo.get_job(session, seq_uuid("job", rng.randrange(seeded.jobs)))
        if job is None:
            raise BenchError("get_job missed a seeded id")
        return job

    return {"newest": newest, "deep": deep, "filtered": filtered, "get": get}


async def time_queries(env: BenchEnv, histories: list[History], sizes: Sizes) -> None:
    """Per size and query: the latency of each timed call (ms), and the EXPLAIN ANALYZE
    summaries of one untimed call. One session per call, as the service's reads; a warm-up
    first gets psycopg to prepare the statements. The sizes take turns call by call, in
    rotating order, so a swing in the machine's load hits them alike."""
    engines = [create_engine(env.settings(h.db_url).db, h.db_url) for h in histories]
    try:
        runs = []
        for n, (history, engine) in enumerate(zip(histories, engines, strict=True)):
            queries = calls(history.seeded, history.cursor, random.Random(7 + n))
            runs.append((history, engine, create_session_factory(engine), queries))
            history.latencies_ms = {q.key: [] for q in QUERIES}
        for history, engine, sessions, queries in runs:
            for _ in range(10):
                for query in QUERIES:
                    async with sessions() as session:
                        await queries[query.key](session)
            for query in QUERIES:
                with PlanRecorder(engine, analyze=True) as recorder:
                    async with sessions() as session:
                        await queries[query.key](session)
                history.plans[query.key] = [plan_summary(doc) for _, doc in recorder.plans]
        for i in range(sizes.calls):
            for query in QUERIES:
                for history, _, sessions, queries in runs[i % len(runs) :] + runs[: i % len(runs)]:
                    started = time.perf_counter()
                    async with sessions() as session:
                        await queries[query.key](session)
                    history.latencies_ms[query.key].append((time.perf_counter() - started) * 1000)
    finally:
        for engine in engines:
            await engine.dispose()


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


def percentile_of(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(env: BenchEnv, quick: bool) -> BenchResult:
    sizes = QUICK if quick else FULL
    figures = measure(env, sizes)
    small, large = figures[0], figures[-1]
    series: list[Series] = []
    ratios: list[Ratio] = []
    for query in QUERIES:
        for fig in figures:
            samples = fig.latencies_ms[query.key]
            label = size_label(fig.jobs)
            note = f"p95 {percentile_of(samples, 0.95):.2f} ms"
            if query.key == "deep":
                note += f"; page {fig.deep_page:,}"
            series.append(
                Series(f"{query.key}_{label}", f"{query.label}, {label} jobs", "ms", samples,
                       better="lower", note=note)
            )  # fmt: skip
        for fig in figures[1:]:
            target = HISTORY_TARGET if fig is large else None
            label = size_label(fig.jobs)
            ratios.append(
                Ratio(f"{query.key}_{label}", f"{query.key}_{size_label(small.jobs)}", target,
                      label=f"{query.label}: p50 at {label} jobs", unit="time")
            )  # fmt: skip
    for fig in figures:
        label, files = size_label(fig.jobs), len(fig.seeded.expired_shas)
        series.append(
            Series(f"sweep_{label}", f"sweep of {files:,} expired uploads, {label} jobs",
                   "files/s", fig.sweep_rates, note="Sweeper, uploads policy, 10 % of media")
        )  # fmt: skip
    for fig in figures[1:]:
        target = SWEEP_TARGET if fig is large else None
        ratios.append(
            Ratio(f"sweep_{size_label(fig.jobs)}", f"sweep_{size_label(small.jobs)}", target,
                  label=f"sweep files/s at {size_label(fig.jobs)} jobs")
        )  # fmt: skip
    per_million = 1_000_000 / large.jobs / (1 << 20)
    for table in TABLES:
        total, heap, indexes = large.relation_bytes[table]
        series.append(
            Series(f"size_{table}", f"{table}: total MiB per 1M jobs", "MiB",
                   [total * per_million], role="context", better="lower",
                   note=f"heap {heap * per_million:.0f} MiB + indexes {indexes * per_million:.0f}"
                   f" MiB (+ TOAST, FSM/VM); at {size_label(large.jobs)} jobs")
        )  # fmt: skip
    for fig in figures:
        label = size_label(fig.jobs)
        series.append(
            Series(f"seed_{label}", f"seed {label} jobs (COPY + VACUUM ANALYZE), untimed", "s",
                   [fig.seeded.seconds], role="context", better="lower",
                   note=f"{fig.seeded.results:,} results, {fig.seeded.media:,} media "
                   f"({fig.seeded.media_live:,} live, expired ones included)")
        )  # fmt: skip
    notes = [
        "Seeded per size in a fresh database migrated by app_patch.migrate: a year of "
        "history written in creation order; media shared by 2.5 jobs on average; types "
        f"{', '.join(f'{n} {w} %' for n, w in ANALYSIS_TYPES)}; {FAILED_SHARE:.0%} failed, "
        "the last 15 minutes queued/running; media last used more than uploads_days ago "
        "already swept, except 10 % of all media rows, live and just expired (their files "
        "are the sweep's). Then VACUUM ANALYZE.",
        "Each call opens its own session, as the service's reads do; no Redis. The deep "
        "page's cursor is built directly from the row ending the page before it (the cursor "
        "the API hands out there); a history shorter than 2,000 pages uses its middle page.",
        f"The sweep deletes 10 % of the media rows' files, not of the jobs' "
        f"({len(large.seeded.expired_shas):,}"
        f" files at {size_label(large.jobs)} jobs); between repetitions the same rows are made "
        "live again and their files re-created (untimed).",
        "Table sizes are pg_total_relation_size / pg_relation_size / pg_indexes_size after "
        "the load, scaled to one million jobs; retention_events is empty then.",
    ]
    for key, lines in large.plans.items():
        notes += [f"Plan at {size_label(large.jobs)} jobs, {key}: {line}" for line in lines]
    return BenchResult(
        name=NAME,
        title=TITLE,
        series=series,
        ratios=ratios,
        params={
            "jobs": "/".join(size_label(j) for j in sizes.jobs),
            "page_size": PAGE,
            "calls_per_query": sizes.calls,
            "sweeps": sizes.sweeps,
            "sweep_batch": RetentionSettings().batch_size,
            "disk_dir": str(disk_dir(env)),
        },
        notes=notes,
    )
