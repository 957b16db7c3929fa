"""The set-based row batch of the sweeper, its key checks and its outbox reads.

One statement per batch marks the locked rows deleted and writes their audit rows; the lock
discipline around it (``file_locks``: key lock, row lock, re-check) is unchanged, so a busy key
is still skipped. Keys of the store's own shape are checked without ``realpath``; the outbox
is read once per sweep and read again whenever its directories change.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app_patch import repository as repo
from app_patch import retention
from app_patch.db import libpq_url
from app_patch.file_locks import key_lock_id
from app_patch.outbox import Outbox, OutboxEntry
from app_patch.retention import Policy, Sweeper
from app_patch.storage import Storage, StorageKeyError, upload_key
from tests.integration.history_data import finished_job
from tests.integration.test_storage_support import (
    assert_converged,
    audit_counts,
    files_under,
    query,
    retention_settings,
    seed,
    storage_settings,
)

pytestmark = pytest.mark.usefixtures("clean_db")


async def test_each_deleted_row_gets_exactly_its_audit_row(
    engine: AsyncEngine, storage: Storage, clean_db: str
) -> None:
    seeded = seed(
        clean_db,
        storage.root,
        expired_media=130,
        live_media=20,
        expired_artifacts=70,
        live_artifacts=10,
    )

    report = await Sweeper(engine, storage, retention_settings(batch_size=50)).sweep(
        policies=[Policy.uploads, Policy.artifacts]
    )

    assert report.total_objects == 200 and report.error_count == 0
    assert_converged(clean_db, storage.root, seeded)
    rows = query(
        clean_db,
        "SELECT object_type, object_id, storage_key, bytes_freed, policy, reason"
        " FROM retention_events",
    )
    expected = {str(row_id): (key, size) for row_id, (key, size) in seeded.expired.items()}
    assert len(rows) == len(expected)
    for object_type, object_id, key, freed, policy, reason in rows:
        assert (key, freed) == expected[str(object_id)]
        assert (object_type, policy) in {
            ("media_file", "uploads"),
            ("artifact", "artifacts"),
        }
        assert reason == "expired"


async def test_a_busy_key_is_skipped_and_kept_by_the_set_based_batch(
    engine: AsyncEngine, storage: Storage, clean_db: str
) -> None:
    seeded = seed(clean_db, storage.root, expired_media=30, live_media=5)
    busy_id, (busy_key, _) = next(iter(seeded.expired.items()))
    with psycopg.connect(libpq_url(clean_db), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key_lock_id(busy_key),))
        report = await Sweeper(engine, storage, retention_settings(batch_size=8)).sweep(
            policies=[Policy.uploads]
        )
        assert (storage.root / busy_key).is_file(), "a key held by a writer keeps its file"
        assert report.skipped >= 1
        assert report.policies[Policy.uploads].objects == 29
        [(deleted_at,)] = query(
            clean_db, "SELECT deleted_at FROM media_files WHERE id = %s", busy_id
        )
        assert deleted_at is None
        assert ("media_file", str(busy_id)) not in audit_counts(clean_db)

    again = await Sweeper(engine, storage, retention_settings()).sweep(policies=[Policy.uploads])
    assert again.policies[Policy.uploads].objects == 1
    assert_converged(clean_db, storage.root, seeded)


async def test_an_outbox_entry_keeps_its_file_and_its_expired_row(
    engine: AsyncEngine, storage: Storage, clean_db: str
) -> None:
    seeded = seed(clean_db, storage.root, expired_media=12, live_media=0)
    kept_id, (kept_key, size) = next(iter(seeded.expired.items()))
    sha = kept_key.rsplit("/", 1)[1]
    Outbox(storage.outbox_dir).append(
        OutboxEntry(finished_job(), repo.MediaSnapshot(sha, size, "text/plain", kept_key))
    )

    report = await Sweeper(engine, storage, retention_settings(batch_size=5)).sweep(
        policies=[Policy.uploads]
    )

    assert report.policies[Policy.uploads].objects == 11
    assert (storage.root / kept_key).is_file()
    assert ("media_file", str(kept_id)) not in audit_counts(clean_db)


def _outbox_entry_for(outbox: Outbox, key: str) -> None:
    sha = key.rsplit("/", 1)[1]
    outbox.append(OutboxEntry(finished_job(), repo.MediaSnapshot(sha, 1, "text/plain", key)))


def test_outbox_keys_are_read_once_and_again_after_every_change(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    first = upload_key("a" * 64)
    _outbox_entry_for(outbox, first)
    keys = retention.OutboxKeys(Outbox(outbox.directory, create=False))

    assert keys.current() == {first}
    assert keys.reads == 1
    assert keys.current() == {first}, "a fresh stamp is not trusted yet"
    assert keys.reads == 2

    keys.SETTLE_NS = 0  # as if the stamps had settled (they are older than any read now)
    keys.trusted = False
    assert keys.current() == {first}
    for _ in range(5):
        assert keys.current() == {first}
    assert keys.reads == 3, "unchanged directories: no re-read"

    time.sleep(0.05)  # a new clock tick for the directory's times
    second = upload_key("b" * 64)
    _outbox_entry_for(outbox, second)
    assert keys.current() == {first, second}, "a new pending entry is seen at once"

    time.sleep(0.05)
    entry = next(p for p in outbox.directory.glob("*.json") if second not in p.read_text())
    outbox.quarantine(entry, "poison")
    assert keys.current() == {first, second}, "a failed entry still keeps its file"
    assert keys.reads == 5


def test_store_keys_are_checked_without_realpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage(storage_settings(tmp_path / "root"))
    key = upload_key("c" * 64)
    (storage.root / key).parent.mkdir(parents=True)
    (storage.root / key).write_bytes(b"x")

    def no_realpath(path: object, *args: object, **kwargs: object) -> str:
        raise AssertionError(f"realpath({path!r}) called")

    monkeypatch.setattr(os.path, "realpath", no_realpath)
    for bad in ("uploads/../../etc/passwd", "/etc/passwd", "uploads/cc/./x", "", "up\x00loads/x"):
        with pytest.raises(StorageKeyError):
            storage.remove(bad)
    assert storage.remove(key) is True
    assert storage.remove(key) is False, "already gone"
    assert storage.remove(upload_key("d" * 64)) is False, "no folder at all: gone"
    assert files_under(storage.root) == set()


def test_a_symlinked_folder_on_a_store_key_is_refused(tmp_path: Path) -> None:
    storage = Storage(storage_settings(tmp_path / "root"))
    sha = "e" * 64
    outside = tmp_path / "outside"
    (outside / sha[2:4]).mkdir(parents=True)
    victim = outside / sha[2:4] / sha
    victim.write_bytes(b"not the store's")
    (storage.root / "uploads").mkdir(parents=True)
    os.symlink(outside, storage.root / "uploads" / sha[0:2])

    with pytest.raises(StorageKeyError):
        storage.remove(upload_key(sha))
    assert victim.read_bytes() == b"not the store's"


async def test_a_dry_run_changes_nothing(
    engine: AsyncEngine, storage: Storage, clean_db: str
) -> None:
    seed(clean_db, storage.root, expired_media=20, live_media=3, expired_artifacts=4)
    before = files_under(storage.root)
    rows = query(clean_db, "SELECT id, deleted_at FROM media_files ORDER BY id")

    report = await Sweeper(engine, storage, retention_settings(batch_size=6)).sweep(
        dry_run=True, policies=[Policy.uploads, Policy.artifacts]
    )

    assert report.total_objects == 24
    assert files_under(storage.root) == before
    assert query(clean_db, "SELECT id, deleted_at FROM media_files ORDER BY id") == rows
    assert query(clean_db, "SELECT count(*) FROM retention_events") == [(0,)]
