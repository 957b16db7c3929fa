"""Uploads and artifacts against a real PostgreSQL and filesystem: one file and one row."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app_patch import repository as repo
from app_patch.db import libpq_url
from app_patch.file_locks import key_lock_id
from app_patch.media import MediaNotFoundError, MediaStore
from app_patch.repository import JobNotFoundError
from app_patch.storage import (
    Storage,
    StorageKeyError,
    UploadTooLargeError,
    upload_key,
)
from tests.integration.test_storage_support import (
    chunks_of,
    execute,
    files_under,
    query,
    retention_settings,
    storage_settings,
)

pytestmark = pytest.mark.usefixtures("clean_db")

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def store(tmp_path: Path, session_factory: Sessions) -> MediaStore:
    storage = await Storage.open(storage_settings(tmp_path / "root"))
    return MediaStore(session_factory, storage, retention_settings(touch_interval_s=0))


async def read_all(store: MediaStore, sha: str) -> bytes:
    opened = await store.open_media(sha)
    return b"".join([chunk async for chunk in opened.chunks()])


async def test_upload_stores_file_and_row(store: MediaStore, clean_db: str) -> None:
    data = b"\x89PNG" + bytes(range(256)) * 100
    media = await store.register_upload(
        chunks_of(data), content_type="image/png", original_name="cat\x00.png"
    )
    sha = hashlib.sha256(data).hexdigest()
    assert (media.sha256, media.size_bytes, media.created) == (sha, len(data), True)
    assert media.storage_key == upload_key(sha) and media.original_name == "cat.png"
    assert (store.storage.root / media.storage_key).read_bytes() == data
    [(row_id, ctype, expires_in)] = query(
        clean_db, "SELECT id, content_type, expires_at - now() FROM media_files"
    )
    assert row_id == media.id and ctype == "image/png"
    assert timedelta(days=29) < expires_in <= timedelta(days=30)


async def test_same_content_twice_is_one_file_and_one_row(store: MediaStore, clean_db: str) -> None:
    data = b"twice" * 5000
    first = await store.register_upload(chunks_of(data), content_type="text/plain")
    second = await store.register_upload(chunks_of(data, 333), content_type="image/gif")
    assert first.id == second.id and (first.created, second.created) == (True, False)
    assert second.content_type == "text/plain", "a live row keeps its metadata"
    assert files_under(store.storage.root) == {first.storage_key}
    assert query(clean_db, "SELECT count(*) FROM media_files") == [(1,)]


async def test_concurrent_uploads_of_the_same_bytes(store: MediaStore, clean_db: str) -> None:
    data = b"race" * 10000
    results = await asyncio.gather(*(store.register_upload(chunks_of(data)) for _ in range(12)))
    assert len({r.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert files_under(store.storage.root) == {results[0].storage_key}
    assert query(clean_db, "SELECT count(*) FROM media_files") == [(1,)]


async def test_reupload_revives_a_deleted_row(store: MediaStore, clean_db: str) -> None:
    data = b"come back" * 100
    first = await store.register_upload(chunks_of(data), content_type="text/plain")
    store.storage.remove(first.storage_key)
    execute(clean_db, "UPDATE media_files SET deleted_at = now()")
    again = await store.register_upload(chunks_of(data), content_type="text/csv")
    assert again.id == first.id and again.created is True
    assert again.content_type == "text/csv", "a revived row takes the new metadata"
    assert (store.storage.root / again.storage_key).read_bytes() == data
    assert query(clean_db, "SELECT deleted_at FROM media_files") == [(None,)]


async def test_too_large_upload_leaves_no_row_and_no_file(store: MediaStore, clean_db: str) -> None:
    with pytest.raises(UploadTooLargeError):
        await store.register_upload(chunks_of(b"z" * 5000), max_bytes=4999)
    assert files_under(store.storage.root) == set()
    assert query(clean_db, "SELECT count(*) FROM media_files") == [(0,)]


async def test_failed_commit_leaves_no_live_row_and_only_a_reconcilable_file(
    store: MediaStore, clean_db: str, migrated_owner_url: str
) -> None:
    """The database refuses at COMMIT (deferred trigger), after the file was placed.
    The trigger is DDL: the owner's (the app role may not create one)."""
    with psycopg.connect(libpq_url(migrated_owner_url), autocommit=True) as conn:
        conn.execute(
            """
            CREATE FUNCTION fail_commit() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'injected commit failure'; END $$;
            CREATE CONSTRAINT TRIGGER fail_commit AFTER INSERT ON media_files
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_commit();
            """
        )
    try:
        with pytest.raises(DBAPIError, match="injected commit failure"):
            await store.register_upload(chunks_of(b"orphan to be"))
    finally:
        with psycopg.connect(libpq_url(migrated_owner_url), autocommit=True) as conn:
            conn.execute("DROP TRIGGER fail_commit ON media_files; DROP FUNCTION fail_commit()")
    assert query(clean_db, "SELECT count(*) FROM media_files") == [(0,)]
    key = upload_key(hashlib.sha256(b"orphan to be").hexdigest())
    assert files_under(store.storage.root) == {key}, "left for orphan reconciliation"
    # a retry adopts the file that is already there
    media = await store.register_upload(chunks_of(b"orphan to be"))
    assert media.created and files_under(store.storage.root) == {key}


async def test_open_media_streams_and_touches(store: MediaStore, clean_db: str) -> None:
    data = bytes(range(256)) * 9000
    media = await store.register_upload(chunks_of(data))
    execute(
        clean_db,
        "UPDATE media_files SET last_accessed_at = now() - interval '10 days',"
        " expires_at = now() + interval '1 day'",
    )
    assert await read_all(store, media.sha256) == data
    [(age, expires_in)] = query(
        clean_db, "SELECT now() - last_accessed_at, expires_at - now() FROM media_files"
    )
    assert age < timedelta(seconds=5) and expires_in > timedelta(days=29)


async def test_open_media_errors(store: MediaStore, clean_db: str) -> None:
    with pytest.raises(StorageKeyError):
        await store.open_media("../../etc/passwd")
    with pytest.raises(MediaNotFoundError):
        await store.open_media("ab" * 32)
    media = await store.register_upload(chunks_of(b"will vanish"))
    (store.storage.root / media.storage_key).unlink()
    with pytest.raises(MediaNotFoundError, match="file missing"):
        await store.open_media(media.sha256)


async def test_open_file_survives_deletion(store: MediaStore) -> None:
    data = b"keep streaming" * 10000
    media = await store.register_upload(chunks_of(data))
    opened = await store.open_media(media.sha256)
    store.storage.remove(media.storage_key)
    assert b"".join([c async for c in opened.chunks(4096)]) == data


async def test_store_artifact(store: MediaStore, session_factory: Sessions, clean_db: str) -> None:
    async with session_factory.begin() as session:
        job, _ = await repo.create_job(session, repo.NewJob(analysis_type="basic"))
    art = await store.store_artifact(job.id, "thumbnail", "png", chunks_of(b"thumb"), "image/png")
    today = datetime.now(UTC).date()
    assert art.storage_key == f"artifacts/{today:%Y/%m/%d}/{job.id}/thumbnail.png"
    assert (store.storage.root / art.storage_key).read_bytes() == b"thumb"
    [(expires_in,)] = query(clean_db, "SELECT expires_at - now() FROM artifacts")
    assert timedelta(days=13) < expires_in <= timedelta(days=14)
    again = await store.store_artifact(job.id, "thumbnail", "png", chunks_of(b"thumb v2"))
    assert again.id == art.id and again.size_bytes == 8
    assert (store.storage.root / art.storage_key).read_bytes() == b"thumb v2"
    opened = await store.open_artifact(art.id)
    assert b"".join([c async for c in opened.chunks()]) == b"thumb v2"


async def test_store_artifact_refusals(store: MediaStore, clean_db: str) -> None:
    with pytest.raises(JobNotFoundError):
        await store.store_artifact(uuid.uuid4(), "report", "json", chunks_of(b"{}"))
    for kind, ext in [("../x", "png"), ("a/b", "png"), ("ok", "p/ng"), ("ok", ""), ("", "png")]:
        with pytest.raises(StorageKeyError):
            await store.store_artifact(uuid.uuid4(), kind, ext, chunks_of(b"x"))
    assert files_under(store.storage.root) == set()
    assert query(clean_db, "SELECT count(*) FROM artifacts") == [(0,)]


async def test_upload_racing_a_sweeper_mid_batch_keeps_row_and_file(
    store: MediaStore, session_factory: Sessions, clean_db: str
) -> None:
    """The sweeper holds the row lock, has unlinked the file, has not committed yet: a
    re-upload of the same bytes waits on the lock, then revives the row and places the file."""
    data = b"contended" * 1000
    first = await store.register_upload(chunks_of(data))
    async with session_factory.begin() as sweeper_tx:
        await sweeper_tx.execute(
            text("SELECT id FROM media_files WHERE id = :id FOR UPDATE SKIP LOCKED"),
            {"id": first.id},
        )
        store.storage.remove(first.storage_key)
        upload = asyncio.create_task(store.register_upload(chunks_of(data)))
        await asyncio.sleep(0.3)
        assert not upload.done(), "the upload waits for the sweeper's row lock"
        await sweeper_tx.execute(
            text("UPDATE media_files SET deleted_at = now() WHERE id = :id"), {"id": first.id}
        )
    again = await upload
    assert again.id == first.id and again.created, "revived"
    assert (store.storage.root / again.storage_key).read_bytes() == data
    assert query(clean_db, "SELECT deleted_at FROM media_files") == [(None,)]


async def test_upload_racing_orphan_reconciliation_keeps_its_file(
    store: MediaStore, engine: AsyncEngine, clean_db: str
) -> None:
    """Reconciliation holds the key's advisory lock while it removes an orphan: an upload of
    those bytes waits, then finds no file and places its own."""
    data = b"was an orphan" * 100
    key = upload_key(hashlib.sha256(data).hexdigest())
    (store.storage.root / key).parent.mkdir(parents=True)
    (store.storage.root / key).write_bytes(data)
    async with engine.connect() as reaper:
        await reaper.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key_lock_id(key)})
        upload = asyncio.create_task(store.register_upload(chunks_of(data)))
        await asyncio.sleep(0.3)
        assert not upload.done(), "the upload waits for the reaper"
        store.storage.remove(key)
        await reaper.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key_lock_id(key)})
        await reaper.commit()
    media = await upload
    assert media.created and (store.storage.root / key).read_bytes() == data
