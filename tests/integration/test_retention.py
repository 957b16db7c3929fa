"""The sweeper on a real PostgreSQL and filesystem: exact deletions, audits and reconciliation."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app_patch.media import MediaStore
from app_patch.retention import Policy, Sweeper, UnknownPolicyError, parse_policies
from app_patch.storage import Storage, artifact_key, upload_key
from app_patch.store_identity import StoreMismatchError, ensure_marker
from tests.integration.test_storage_support import (
    assert_converged,
    audit_counts,
    chunks_of,
    db_snapshot,
    execute,
    files_under,
    query,
    record_store,
    retention_settings,
    seed,
    storage_settings,
)

pytestmark = pytest.mark.usefixtures("clean_db")


def sweeper(engine: AsyncEngine, storage: Storage, **settings: object) -> Sweeper:
    return Sweeper(engine, storage, retention_settings(**settings))


async def test_sweep_of_10k_expired_among_10k_live(
    engine: AsyncEngine, storage: Storage, clean_db: str
) -> None:
    started = time.monotonic()
    seeded = seed(
        clean_db,
        storage.root,
        expired_media=5000,
        live_media=5000,
        expired_artifacts=5000,
        live_artifacts=5000,
    )
    seeded_s = time.monotonic() - started
    live_before = {key: (storage.root / key).stat().st_mtime_ns for key, _ in seeded.live.values()}
    progress: list[tuple[Policy, int, int | None]] = []

    started = time.monotonic()
    report = await sweeper(engine, storage).sweep(on_progress=lambda *event: progress.append(event))
    sweep_s = time.monotonic() - started
    print(f"\nseed 20k objects: {seeded_s:.2f}s; sweep 10k of 20k: {sweep_s:.2f}s")

    assert report.policies[Policy.uploads].objects == 5000
    assert report.policies[Policy.artifacts].objects == 5000
    assert report.total_objects == 10_000 and report.error_count == 0
    assert report.total_bytes == seeded.expired_bytes
    [(audits, freed)] = query(clean_db, "SELECT count(*), sum(bytes_freed) FROM retention_events")
    assert (audits, freed) == (10_000, seeded.expired_bytes), "audit rows = deletions"
    assert_converged(clean_db, storage.root, seeded)
    assert {
        key: (storage.root / key).stat().st_mtime_ns for key, _ in seeded.live.values()
    } == live_before, "live files untouched"
    assert (Policy.uploads, 5000, 5000) in progress
    assert int(query(clean_db, "SELECT count(*) FROM analysis_results")[0][0]) == 20

    again = await sweeper(engine, storage).sweep()
    assert again.total_objects == 0, "a second sweep finds nothing"


async def test_orphan_files_and_missing_files_are_reconciled(
    engine: AsyncEngine, storage: Storage, clean_db: str
) -> None:
    seeded = seed(clean_db, storage.root, expired_media=0, live_media=6, live_artifacts=4)
    media_ids, artifact_ids = list(seeded.live_media), list(seeded.live_artifacts)
    # rows whose file is gone
    (storage.root / seeded.live_media[media_ids[0]][0]).unlink()
    (storage.root / seeded.live_artifacts[artifact_ids[0]][0]).unlink()
    # files that no live row references: a stray upload, an artifact of a deleted row, junk
    stray = upload_key("ef" * 32)
    (storage.root / stray).parent.mkdir(parents=True)
    (storage.root / stray).write_bytes(b"stray")
    execute(
        clean_db,
        "UPDATE artifacts SET deleted_at = now() WHERE id = %s",
        artifact_ids[1],
    )
    junk = "artifacts/2020/01/01/junk.txt"
    (storage.root / junk).parent.mkdir(parents=True)
    (storage.root / junk).write_bytes(b"junk!")

    report = await sweeper(engine, storage).sweep()

    assert report.policies[Policy.missing].objects == 2
    assert report.policies[Policy.orphans].objects == 3
    assert (
        report.policies[Policy.orphans].bytes == 5 + 5 + seeded.live_artifacts[artifact_ids[1]][1]
    )
    audits = {
        (t, i, r)
        for t, i, r in query(
            clean_db, "SELECT object_type, object_id, reason FROM retention_events"
        )
    }
    assert ("media_file", str(media_ids[0]), "file missing") in audits
    assert ("artifact", str(artifact_ids[0]), "file missing") in audits
    orphan_keys = {i for t, i, _ in audits if t == "orphan_file"}
    assert orphan_keys == {stray, junk, seeded.live_artifacts[artifact_ids[1]][0]}
    live_keys = {
        k for i, (k, _) in seeded.live.items() if i not in set(artifact_ids[:2]) | {media_ids[0]}
    }
    assert files_under(storage.root) == live_keys
    assert not (storage.root / "artifacts/2020").exists(), "old empty folders are pruned"


async def test_orphans_younger_than_the_grace_period_stay(
    engine: AsyncEngine, storage: Storage, clean_db: str
) -> None:
    stray = upload_key("ef" * 32)
    (storage.root / stray).parent.mkdir(parents=True)
    (storage.root / stray).write_bytes(b"maybe an upload committing right now")
    record_store(clean_db, storage.root)
    report = await sweeper(engine, storage, orphan_grace_s=3600).sweep()
    assert report.policies[Policy.orphans].objects == 0 and report.skipped >= 1
    assert (storage.root / stray).exists()


async def test_tmp_policy_removes_old_leftovers_but_not_live_writes(
    engine: AsyncEngine, storage: Storage, clean_db: str
) -> None:
    old = time.time() - 2 * 86400
    leftover = storage.tmp_dir / "someone-elses.tmp"
    leftover.write_bytes(b"old")
    os.utime(leftover, (old, old))

    never = asyncio.Event()

    async def held() -> AsyncIterator[bytes]:
        yield b"slow client"
        await never.wait()

    async def upload() -> None:
        async with storage.stage(held()):
            pass

    task = asyncio.create_task(upload())
    for _ in range(200):
        if any(p.name.startswith("ma-") for p in storage.tmp_dir.iterdir()):
            break
        await asyncio.sleep(0.01)
    [live] = [p for p in storage.tmp_dir.iterdir() if p.name.startswith("ma-")]
    os.utime(live, (old, old))  # old, but its writer is alive and holds the flock

    report = await sweeper(engine, storage).sweep(policies=[Policy.tmp])
    assert report.policies[Policy.tmp].objects == 1
    assert sorted(p.name for p in storage.tmp_dir.iterdir()) == [live.name]
    assert query(clean_db, "SELECT object_type, object_id FROM retention_events") == [
        ("tmp_file", "tmp/someone-elses.tmp")
    ]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_quota_evicts_expired_first_then_least_recently_used(
    engine: AsyncEngine,
    storage: Storage,
    session_factory: async_sessionmaker[AsyncSession],
    clean_db: str,
) -> None:
    store = MediaStore(session_factory, storage, retention_settings())
    media = [await store.register_upload(chunks_of(bytes([n]) * 1000)) for n in range(6)]
    now = datetime.now(UTC)
    for n, m in enumerate(media):  # media[0] least recently used ... media[5] most recent
        execute(
            clean_db,
            "UPDATE media_files SET last_accessed_at = %s WHERE id = %s",
            now - timedelta(hours=10 - n),
            m.id,
        )
    execute(
        clean_db,
        "UPDATE media_files SET expires_at = now() - interval '1 s' WHERE id = %s",
        media[4].id,
    )
    report = await sweeper(engine, storage, quota_bytes=3500).sweep(policies=[Policy.quota])
    # 6000 bytes, 3500 allowed: the expired one (media[4]), then the two least recently used
    assert report.policies[Policy.quota].objects == 3
    gone = {
        r[0] for r in query(clean_db, "SELECT id FROM media_files WHERE deleted_at IS NOT NULL")
    }
    assert gone == {media[4].id, media[0].id, media[1].id}
    assert files_under(storage.root) == {m.storage_key for m in (media[2], media[3], media[5])}
    reasons = [r[0] for r in query(clean_db, "SELECT reason FROM retention_events ORDER BY id")]
    assert reasons[0].endswith("expired") and reasons[1].endswith("least recently used")


async def test_policy_filter_and_unknown_names(
    engine: AsyncEngine, storage: Storage, clean_db: str
) -> None:
    seeded = seed(clean_db, storage.root, expired_media=3, live_media=1, expired_artifacts=2)
    report = await sweeper(engine, storage).sweep(policies=parse_policies("artifacts"))
    assert list(report.policies) == [Policy.artifacts]
    assert report.total_objects == 2
    assert len(audit_counts(clean_db)) == 2
    assert all((storage.root / k).exists() for k, _ in seeded.expired_media.values())
    assert parse_policies("") == tuple(Policy)
    assert parse_policies(" TMP, uploads") == (Policy.uploads, Policy.tmp)
    with pytest.raises(UnknownPolicyError, match=r"'bogus'.*choose from: uploads"):
        parse_policies("uploads,bogus")


async def test_history_is_never_deleted(
    engine: AsyncEngine, storage: Storage, clean_db: str
) -> None:
    seeded = seed(clean_db, storage.root, expired_media=5, live_media=0, expired_artifacts=5)
    execute(
        clean_db,
        "UPDATE analysis_jobs SET media_file_id = %s",
        next(iter(seeded.expired_media)),
    )
    await sweeper(engine, storage, quota_bytes=0).sweep()
    assert int(query(clean_db, "SELECT count(*) FROM analysis_jobs")[0][0]) == 20
    assert int(query(clean_db, "SELECT count(*) FROM analysis_results")[0][0]) == 20
    assert query(clean_db, "SELECT count(DISTINCT media_file_id) FROM analysis_jobs") == [(1,)]


def test_recent_artifact_folders_are_kept() -> None:
    from app_patch.retention import recent_artifact_dir

    today = date.today()
    assert recent_artifact_dir(f"artifacts/{today:%Y/%m/%d}")
    assert recent_artifact_dir(f"artifacts/{today:%Y/%m}")
    assert recent_artifact_dir(f"artifacts/{today:%Y}")
    assert not recent_artifact_dir("artifacts/2020/01/01")
    assert not recent_artifact_dir("artifacts/2020")
    assert recent_artifact_dir("artifacts/not-a-year")
    key = artifact_key(uuid.uuid4(), "k", "bin", today)
    assert recent_artifact_dir(key.rsplit("/", 1)[0])


async def test_wrong_database_does_not_wipe_the_store(
    engine: AsyncEngine, storage: Storage, clean_db: str, migrated_owner_url: str
) -> None:
    """A sweep pointed at an empty database sees every file as an orphan: it refuses."""
    seeded = seed(clean_db, storage.root, expired_media=0, live_media=150)
    execute(migrated_owner_url, "TRUNCATE media_files CASCADE")  # the app role may not
    before = files_under(storage.root)
    report = await sweeper(engine, storage).sweep(policies=[Policy.orphans])
    assert report.policies[Policy.orphans].objects == 0
    assert report.error_count == 1 and "orphans: refused" in report.errors[0]
    assert files_under(storage.root) == before == {k for k, _ in seeded.live.values()}
    assert audit_counts(clean_db) == {}


async def test_wrong_storage_root_is_refused_before_anything_changes(
    engine: AsyncEngine, tmp_path: Path, clean_db: str
) -> None:
    seed(clean_db, tmp_path / "real", expired_media=3, live_media=150)
    wrong = Storage(storage_settings(tmp_path / "wrong"))
    before = db_snapshot(clean_db)
    for dry_run in (True, False):
        with pytest.raises(StoreMismatchError, match="has no storage marker"):
            await sweeper(engine, wrong).sweep(dry_run=dry_run)
    assert db_snapshot(clean_db) == before, "nothing changed in the database"
    assert not (tmp_path / "wrong").exists(), "nothing created under the wrong root"

    other = await Storage.open(storage_settings(tmp_path / "other"))
    ensure_marker(other.root)  # a store of its own: another database's, say
    with pytest.raises(StoreMismatchError, match="belongs to another database"):
        await sweeper(engine, other).sweep(policies=[Policy.missing])
    assert db_snapshot(clean_db) == before


async def test_missing_files_above_the_guard_are_refused(
    engine: AsyncEngine, tmp_path: Path, clean_db: str
) -> None:
    """The right store, but most files lost outside the kit: the guard still holds."""
    seeded = seed(clean_db, tmp_path / "real", expired_media=0, live_media=150)
    real = await Storage.open(storage_settings(tmp_path / "real"))
    for key, _ in seeded.live.values():
        (real.root / key).unlink()
    report = await sweeper(engine, real).sweep(policies=[Policy.missing])
    assert report.error_count == 1 and "missing: refused" in report.errors[0]
    assert query(clean_db, "SELECT count(*) FROM media_files WHERE deleted_at IS NULL") == [(150,)]
    dry = await sweeper(engine, real, reconcile_max_fraction=1).sweep(
        dry_run=True, policies=[Policy.missing]
    )
    assert dry.policies[Policy.missing].objects == 150, "the guard can be lifted deliberately"


async def test_rows_without_a_stamped_expiry_follow_the_policy(
    engine: AsyncEngine, storage: Storage, clean_db: str
) -> None:
    """Rows written by other code without ``expires_at`` expire by last use + policy days."""
    seeded = seed(clean_db, storage.root, expired_media=0, live_media=4, live_artifacts=4)
    media, arts = list(seeded.live_media), list(seeded.live_artifacts)
    execute(clean_db, "UPDATE media_files SET expires_at = NULL")
    execute(clean_db, "UPDATE artifacts SET expires_at = NULL")
    execute(
        clean_db,
        "UPDATE media_files SET last_accessed_at = now() - interval '31 days' WHERE id = %s",
        media[0],
    )
    execute(
        clean_db,
        "UPDATE artifacts SET created_at = now() - interval '15 days' WHERE id = %s",
        arts[0],
    )
    report = await sweeper(engine, storage).sweep(policies=[Policy.uploads, Policy.artifacts])
    assert (report.policies[Policy.uploads].objects, report.policies[Policy.artifacts].objects) == (
        1,
        1,
    )
    gone = {
        r[0] for r in query(clean_db, "SELECT id FROM media_files WHERE deleted_at IS NOT NULL")
    }
    assert gone == {media[0]}
