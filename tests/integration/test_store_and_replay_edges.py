"""Edge cases of the store identity, the outbox replay and retention, each once a real defect:
an unmigrated or foreign database, two databases on one root, a wrong root at the first
start after an upgrade, and expiry of a file a deferred job still needs."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from app_patch import migrate as migrations
from app_patch import repository as repo
from app_patch.breaker import Breaker
from app_patch.db import create_engine, create_session_factory, is_database_outage
from app_patch.media import MediaStore
from app_patch.models import AnalysisJob
from app_patch.outbox import Outbox, OutboxEntry, OutboxReplayer
from app_patch.retention import Policy, Sweeper
from app_patch.settings import DatabaseSettings, RetentionSettings
from app_patch.storage import Storage, upload_key
from app_patch.store_identity import StoreMismatchError, ensure_marker
from tests.integration.history_data import finished_job, job_id
from tests.integration.test_storage_support import (
    chunks_of,
    execute,
    query,
    record_store,
    retention_settings,
    storage_settings,
)

DB = DatabaseSettings(pool_size=2, max_overflow=2, pool_timeout_s=5)


def _snapshot(sha: str, size: int) -> repo.MediaSnapshot:
    return repo.MediaSnapshot(sha, size, "text/plain", upload_key(sha))


def _place(root: Path, sha: str, data: bytes) -> None:
    path = root / upload_key(sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _replayer(url: str, root: Path) -> tuple[OutboxReplayer, object]:
    engine = create_engine(DB, url)
    sessions = create_session_factory(engine)
    breaker = Breaker("postgres", threshold=3, recovery_s=1, is_outage=is_database_outage)
    store = MediaStore(sessions, Storage(storage_settings(root)), RetentionSettings())
    return OutboxReplayer(Outbox(root / "outbox"), sessions, breaker, store, interval_s=0.1), engine


async def test_unmigrated_database_does_not_quarantine_pending_entries(
    tmp_path: Path, databases: object
) -> None:
    """API (re)started against a database not migrated yet: pending entries must wait."""
    owner_url = databases.create("unmig")  # type: ignore[attr-defined]
    url = databases.roles.app_url(owner_url)  # type: ignore[attr-defined]  # the app's role
    root = tmp_path / "root"
    root.mkdir()
    replay, engine = _replayer(url, root)
    for _ in range(3):
        replay.outbox.append(OutboxEntry(finished_job(), None))
    try:
        await replay.drain_once()
    finally:
        await engine.dispose()  # type: ignore[attr-defined]
    failed = replay.outbox.failed()
    print("\nquarantined:", [(f.job_id[:8], f.error[:90]) for f in failed])
    assert replay.outbox.failed_count() == 0, "environment error treated as poison"


async def test_replay_refuses_a_database_that_records_another_store(
    tmp_path: Path, databases: object
) -> None:
    """Wrong MA_DATABASE_URL: uploads get 507, but the replayer must not drain the outbox
    into that database (the entries and their files belong to another one)."""
    other_owner = databases.create("other")  # type: ignore[attr-defined]
    await asyncio.to_thread(migrations.upgrade, other_owner)
    other_db = databases.roles.app_url(other_owner)  # type: ignore[attr-defined]  # the app's
    elsewhere = tmp_path / "elsewhere"
    record_store(other_db, elsewhere)  # that DB belongs to another root
    root = tmp_path / "root"
    root.mkdir()
    ensure_marker(root)
    replay, engine = _replayer(other_db, root)
    sha, data = "ab" * 32, b"abc"
    _place(root, sha, data)
    job = finished_job()
    replay.outbox.append(OutboxEntry(job, _snapshot(sha, len(data))))
    try:
        with pytest.raises(StoreMismatchError):  # what uploads get
            await replay.media.check_identity()
        landed = await replay.drain_once()
    finally:
        await engine.dispose()  # type: ignore[attr-defined]
    rows = query(other_db, "SELECT id FROM analysis_jobs")
    print(
        "\nlanded:",
        landed,
        "rows in the wrong database:",
        rows,
        "backlog:",
        replay.outbox.backlog(),
    )
    assert rows == [], "deferred job replayed into a database that records another store"


async def test_two_databases_cannot_share_one_root(tmp_path: Path, databases: object) -> None:
    """A second deployment (fresh DB) pointed at a root another DB already records."""
    owners = [databases.create(name) for name in ("a", "b")]  # type: ignore[attr-defined]
    for url in owners:
        await asyncio.to_thread(migrations.upgrade, url)
    db_a, db_b = (databases.roles.app_url(url) for url in owners)  # type: ignore[attr-defined]
    root = tmp_path / "shared"
    storage = await Storage.open(storage_settings(root))
    eng_a, eng_b = create_engine(DB, db_a), create_engine(DB, db_b)
    try:
        media_a = MediaStore(create_session_factory(eng_a), storage, RetentionSettings())
        media_b = MediaStore(create_session_factory(eng_b), storage, RetentionSettings())
        await media_a.register_upload(chunks_of(b"belongs to A"))
        mismatch = None
        try:
            stored_b = await media_b.register_upload(chunks_of(b"belongs to B"))
        except StoreMismatchError as exc:
            mismatch = exc
        if mismatch is None:
            os.utime(root / stored_b.storage_key, (time.time() - 7200,) * 2)
            report = await Sweeper(eng_a, storage, retention_settings()).sweep(
                policies=[Policy.orphans]
            )
            gone = not (root / stored_b.storage_key).exists()
            print("\nB's live upload deleted by A's orphan sweep:", gone, report.as_dict())
        assert mismatch is not None, "a root recorded by database A was claimed by database B"
    finally:
        await eng_a.dispose()
        await eng_b.dispose()


@pytest.mark.usefixtures("clean_db")
async def test_expiry_keeps_a_file_a_pending_outbox_entry_needs(
    tmp_path: Path, engine: object, session_factory: object, clean_db: str
) -> None:
    """Upload during an outage of bytes whose row is live but expired: place() dedups (the
    existing file stays, no new stamp), the entry names it. The uploads policy runs when PG
    is back, before the replay."""
    root = tmp_path / "root"
    storage = await Storage.open(storage_settings(root))
    record_store(clean_db, root)
    media = MediaStore(session_factory, storage, RetentionSettings())  # type: ignore[arg-type]
    data = b"same bytes again"
    stored = await media.register_upload(chunks_of(data))
    execute(clean_db, "UPDATE media_files SET expires_at = now() - interval '1 day'")
    # ---- the outage: what AnalysisService._record does (place() dedups, entry appended)
    outbox = Outbox(root / "outbox")
    job = finished_job()
    outbox.append(OutboxEntry(job, _snapshot(stored.sha256, len(data))))
    # ---- PG back: the sweeper runs before the replayer's next tick
    await Sweeper(engine, storage, retention_settings()).sweep(  # type: ignore[arg-type]
        policies=[Policy.uploads]
    )
    breaker = Breaker("postgres", threshold=3, recovery_s=1, is_outage=is_database_outage)
    replay = OutboxReplayer(outbox, session_factory, breaker, media, interval_s=0.1)  # type: ignore[arg-type]
    assert await replay.drain_once() == 1
    async with session_factory() as s:  # type: ignore[operator]
        media_id = await s.scalar(
            select(AnalysisJob.media_file_id).where(AnalysisJob.id == job_id(job))
        )
    print("\nfile exists:", (root / stored.storage_key).exists(), "job media:", media_id)
    assert (root / stored.storage_key).exists() and media_id is not None, (
        "accepted upload lost its file to the uploads policy"
    )


@pytest.mark.usefixtures("clean_db")
async def test_writer_does_not_claim_an_empty_root_for_a_database_with_live_rows(
    tmp_path: Path, engine: object, session_factory: object, clean_db: str
) -> None:
    """Upgrade of a deployment that predates store_identity (rows, files, no marker, no
    recorded id), started once with a wrong MA_STORAGE_ROOT (an empty directory)."""
    from tests.integration.test_storage_support import seed

    real = tmp_path / "real"
    seeded = seed(clean_db, real, expired_media=0, live_media=60)
    execute(clean_db, "DELETE FROM store_identity")  # as before migration 0002
    (real / ".store-id").unlink()
    wrong = await Storage.open(storage_settings(tmp_path / "wrong"))
    media = MediaStore(session_factory, wrong, RetentionSettings())  # type: ignore[arg-type]
    claimed = True
    try:
        await media.check_identity()  # what the API's start-up does
    except StoreMismatchError:
        claimed = False
    if claimed:
        report = await Sweeper(engine, wrong, retention_settings()).sweep(  # type: ignore[arg-type]
            policies=[Policy.missing]
        )
        live = query(clean_db, "SELECT count(*) FROM media_files WHERE deleted_at IS NULL")
        print(
            "\nwrong root claimed; missing policy:",
            report.as_dict()["policies"],
            "live rows left:",
            live,
            "of",
            len(seeded.live_media),
        )
    assert not claimed, "an empty root was recorded for a database full of live rows"
