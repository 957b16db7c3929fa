"""Each history query and the retention candidate query is planned on its index.

A database of its own gets 20k jobs (with results and shared media) by COPY, then ANALYZE;
the repository functions and the Sweeper run as the app runs them, and every SELECT they send
is EXPLAINed on the same connection just before it runs (``PlanRecorder``). Plans only: no
timing is asserted here (``invoke bench`` has the scale curve).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app_patch import migrate as migrations
from app_patch import repository as repo
from app_patch import store_identity
from app_patch.db import create_engine, create_session_factory, libpq_url
from app_patch.models import JobStatus
from app_patch.retention import Policy, Sweeper
from app_patch.schemas import HistoryFilter, encode_cursor
from app_patch.settings import DatabaseSettings, RetentionSettings, StorageSettings
from app_patch.storage import Storage
from bench.scale_curve.ids import seq_uuid
from bench.scale_curve.plans import PlanRecorder, plan_nodes, plan_summary
from bench.scale_curve.seed import Seeded, seed
from tests.conftest import DatabaseFactory

JOBS = 20_000
EXPIRED_SHARE = 0.01  # steady state: a day's expiries among a month of live uploads
SCANS = {"Index Scan", "Index Only Scan", "Bitmap Index Scan"}


@pytest.fixture(scope="module")
def seeded_db(databases: DatabaseFactory) -> tuple[str, Seeded]:
    """(the app's URL, the seeded history) of a database of this module's own."""
    owner_url = databases.create("plans")
    migrations.upgrade(owner_url)
    seeded = seed(libpq_url(owner_url), JOBS, expired_share=EXPIRED_SHARE)
    return databases.roles.app_url(owner_url), seeded


@pytest.fixture
async def engine(seeded_db: tuple[str, Seeded]) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(DatabaseSettings(), seeded_db[0])
    yield eng
    await eng.dispose()


async def plans_of(
    engine: AsyncEngine, call: Callable[[AsyncSession], Awaitable[object]]
) -> PlanRecorder:
    with PlanRecorder(engine) as recorder:
        async with create_session_factory(engine)() as session:
            await call(session)
    return recorder


def index_conds(document: dict[str, Any]) -> dict[str, list[str]]:
    """Index name -> the Index Cond of each scan of it in the plan ("" for a full scan)."""
    found: dict[str, list[str]] = {}
    for node in plan_nodes(document["Plan"]):
        if node["Node Type"] in SCANS:
            found.setdefault(node["Index Name"], []).append(node.get("Index Cond", ""))
    return found


HISTORY = ("analysis_jobs", "analysis_results", "media_files")


def assert_no_seq_scan(recorder: PlanRecorder, tables: tuple[str, ...] = HISTORY) -> None:
    """No statement reads one of ``tables`` by a sequential scan (store_identity's single row
    may be)."""
    for statement, document in recorder.plans:
        seq = [
            node["Relation Name"]
            for node in plan_nodes(document["Plan"])
            if node["Node Type"] == "Seq Scan" and node.get("Relation Name") in tables
        ]
        assert not seq, f"Seq Scan on {seq}: {plan_summary(document)}\n{statement}"


def only(recorder: PlanRecorder, table: str) -> dict[str, Any]:
    (document,) = recorder.on(table)
    return document


def assert_results_by_job_id(recorder: PlanRecorder) -> None:
    document = only(recorder, "analysis_results")
    assert "uq_analysis_results_job_id" in index_conds(document), plan_summary(document)


async def test_newest_page_walks_the_created_at_id_index(engine: AsyncEngine) -> None:
    recorder = await plans_of(engine, lambda s: repo.list_history(s, limit=50))

    jobs = only(recorder, "analysis_jobs")
    assert "ix_analysis_jobs_created_at_id" in index_conds(jobs), plan_summary(jobs)
    assert not any(n["Node Type"] == "Sort" for n in plan_nodes(jobs["Plan"])), plan_summary(jobs)
    assert_results_by_job_id(recorder)
    assert_no_seq_scan(recorder)


async def test_keyset_cursor_is_an_index_condition(
    engine: AsyncEngine, seeded_db: tuple[str, Seeded]
) -> None:
    async with create_session_factory(engine)() as session:
        first = await repo.list_history(session, limit=50)
    last = first.items[-1]
    cursor = encode_cursor(last.created_at, last.id)

    recorder = await plans_of(engine, lambda s: repo.list_history(s, limit=50, cursor=cursor))

    jobs = only(recorder, "analysis_jobs")
    (cond,) = index_conds(jobs).get("ix_analysis_jobs_created_at_id", [""])
    assert "ROW(created_at, id) <" in cond, plan_summary(jobs)
    assert_results_by_job_id(recorder)
    assert_no_seq_scan(recorder)


async def test_status_and_time_range_use_the_status_index(
    engine: AsyncEngine, seeded_db: tuple[str, Seeded]
) -> None:
    now = dt.datetime.fromtimestamp(seeded_db[1].now, dt.UTC)
    window = HistoryFilter(
        status=JobStatus.failed,
        created_from=now - dt.timedelta(days=180),
        created_to=now - dt.timedelta(days=150),
    )

    recorder = await plans_of(engine, lambda s: repo.list_history(s, limit=50, filters=window))

    jobs = only(recorder, "analysis_jobs")
    (cond,) = index_conds(jobs).get("ix_analysis_jobs_status_created_at", [""])
    assert "status =" in cond and "created_at >=" in cond, plan_summary(jobs)
    assert_no_seq_scan(recorder)


async def test_get_job_reads_by_primary_key(
    engine: AsyncEngine, seeded_db: tuple[str, Seeded]
) -> None:
    job_id: uuid.UUID = seq_uuid("job", seeded_db[1].jobs // 2)

    recorder = await plans_of(engine, lambda s: repo.get_job(s, job_id))

    jobs = only(recorder, "analysis_jobs")
    assert "pk_analysis_jobs" in index_conds(jobs), plan_summary(jobs)
    assert_results_by_job_id(recorder)
    assert_no_seq_scan(recorder)


async def sweep_plans(engine: AsyncEngine, root: Path) -> tuple[PlanRecorder, int]:
    """A real uploads sweep of ``engine``'s database (its files missing: fine), its plans."""
    storage = await Storage.open(StorageSettings(root=root))
    async with engine.begin() as conn:  # adopt the root: the seeded rows' files are not there
        await store_identity.claim(conn, store_identity.ensure_marker(storage.root))
    with PlanRecorder(engine) as recorder:
        report = await Sweeper(engine, storage, RetentionSettings()).sweep(
            policies=[Policy.uploads]
        )
    return recorder, report.total_objects


LIVE_INDEXES = {"ix_media_files_expires_at_live", "ix_media_files_last_accessed_at_live"}


async def test_retention_candidates_read_only_live_rows_by_index(
    engine: AsyncEngine, seeded_db: tuple[str, Seeded], tmp_path: Path
) -> None:
    """On the scale curve's history (few live media), the count and the candidates walk a
    partial index of live rows (``deleted_at IS NULL``), never the whole table."""
    recorder, deleted = await sweep_plans(engine, tmp_path)

    assert deleted == len(seeded_db[1].expired_shas) > 0
    count, candidates = recorder.on("media_files")[:2]  # the count, then the first batch
    for document in (count, candidates):
        assert LIVE_INDEXES & set(index_conds(document)), plan_summary(document)
    assert_no_seq_scan(recorder)


LIVE_MEDIA = 200_000
EXPIRED_LIVE = 0.02


@pytest.fixture
def live_media_db(databases: DatabaseFactory) -> str:
    """The app's URL of a database of LIVE_MEDIA live uploads, EXPIRED_LIVE of them expired."""
    owner_url = databases.create("plans_live")
    migrations.upgrade(owner_url)
    with psycopg.connect(libpq_url(owner_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO media_files (id, sha256, size_bytes, content_type, storage_key,"
            " created_at, last_accessed_at, expires_at)"
            " SELECT gen_random_uuid(), sha, 64, 'image/jpeg',"
            " 'uploads/' || substr(sha, 1, 2) || '/' || substr(sha, 3, 2) || '/' || sha,"
            " used - interval '1 day', used,"
            " CASE WHEN mod(i, %(every)s) = 0 THEN now() - interval '1 hour'"
            " ELSE used + interval '30 days' END"
            " FROM (SELECT i, encode(sha256(i::text::bytea), 'hex') AS sha,"
            " now() - (mod(i, 29) + 0.5) * interval '1 day' AS used"
            " FROM generate_series(1, %(rows)s) AS i) AS s",
            {"every": round(1 / EXPIRED_LIVE), "rows": LIVE_MEDIA},
        )
        conn.execute("VACUUM ANALYZE media_files")
    return databases.roles.app_url(owner_url)


async def test_retention_or_condition_keeps_the_expiry_index(
    live_media_db: str, tmp_path: Path
) -> None:
    """``expires_at <= now() OR (expires_at IS NULL AND last_accessed_at <= ...)`` does not
    defeat ix_media_files_expires_at_live: with many live uploads and few expired ones, both
    arms become conditions on it (a BitmapOr: ``expires_at <= now()``, ``expires_at IS NULL``)."""
    engine = create_engine(DatabaseSettings(), live_media_db)
    try:
        recorder, deleted = await sweep_plans(engine, tmp_path)
    finally:
        await engine.dispose()

    assert deleted == LIVE_MEDIA // round(1 / EXPIRED_LIVE)
    count, candidates = recorder.on("media_files")[:2]
    for document in (count, candidates):
        conds = index_conds(document).get("ix_media_files_expires_at_live", [])
        assert "(expires_at <= now())" in conds, plan_summary(document)
    assert_no_seq_scan(recorder)
