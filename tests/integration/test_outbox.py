"""The durable outbox and its replayer against a real PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch import repository as repo
from app_patch.breaker import Breaker
from app_patch.db import is_database_outage
from app_patch.media import MediaStore
from app_patch.models import AnalysisJob, AnalysisResult, JobStatus, MediaFile
from app_patch.outbox import Outbox, OutboxEntry, OutboxReplayer
from app_patch.settings import RetentionSettings, StorageSettings
from app_patch.storage import Storage
from tests.integration.history_data import finished_job, job_id

pytestmark = pytest.mark.usefixtures("clean_db")


def media(sha: str = "a" * 64) -> repo.MediaSnapshot:
    return repo.MediaSnapshot(
        sha256=sha,
        size_bytes=3,
        content_type="text/plain",
        storage_key=f"uploads/{sha[:2]}/{sha[2:4]}/{sha}",
    )


def replayer(tmp_path: Path, sessions: async_sessionmaker[AsyncSession]) -> OutboxReplayer:
    breaker = Breaker("postgres", threshold=3, recovery_s=1, is_outage=is_database_outage)
    store = MediaStore(sessions, storage(tmp_path), RetentionSettings())
    return OutboxReplayer(Outbox(tmp_path / "outbox"), sessions, breaker, store, interval_s=0.1)


def storage(tmp_path: Path) -> Storage:
    (tmp_path / "storage").mkdir(exist_ok=True)
    return Storage(StorageSettings(root=tmp_path / "storage"))


def place_file(tmp_path: Path, snapshot: repo.MediaSnapshot) -> None:
    """The upload the API stored before PostgreSQL went down."""
    path = storage(tmp_path).path_for(snapshot.storage_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"abc")


async def counts(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, int, int]:
    async with sessions() as s:
        return (
            int(await s.scalar(select(func.count()).select_from(AnalysisJob)) or 0),
            int(await s.scalar(select(func.count()).select_from(AnalysisResult)) or 0),
            int(await s.scalar(select(func.count()).select_from(MediaFile)) or 0),
        )


async def test_entries_survive_a_reopen_and_replay_exactly_once(
    tmp_path: Path, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    jobs = [finished_job() for _ in range(5)]
    writer = Outbox(tmp_path / "outbox")
    for job in jobs:
        writer.append(OutboxEntry(job, media()))
    assert writer.get(job_id(jobs[0])) == OutboxEntry(jobs[0], media())

    place_file(tmp_path, media())
    first = replayer(tmp_path, session_factory)  # a new process would see the same files
    assert first.outbox.backlog() == 5
    assert await first.drain_once() == 5
    assert first.outbox.backlog() == 0
    assert await counts(session_factory) == (5, 5, 1)

    for job in jobs:  # the same entries again (a crash before unlink): still once each
        writer.append(OutboxEntry(job, media()))
    assert await first.drain_once() == 5
    assert await counts(session_factory) == (5, 5, 1)
    async with session_factory() as s:
        stored = await repo.get_job(s, job_id(jobs[0]))
    assert stored is not None and stored.status is JobStatus.succeeded
    assert stored.result is not None and stored.result.result == {"size_bytes": 3}
    assert stored.media_file_id is not None


async def test_taken_idempotency_key_does_not_lose_the_job(
    tmp_path: Path, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """The key names another request's job: the deferred one is kept, without the key."""
    async with session_factory.begin() as s:
        holder, _ = await repo.create_job(
            s, repo.NewJob("basic", idempotency_key="dup", request_fingerprint="a" * 64)
        )
    late = finished_job(idempotency_key="dup", fingerprint="b" * 64)
    replay = replayer(tmp_path, session_factory)
    replay.outbox.append(OutboxEntry(late, None))
    assert await replay.drain_once() == 1
    async with session_factory() as s:
        stored = await repo.get_job(s, job_id(late))
    assert stored is not None and stored.idempotency_key is None
    assert holder.idempotency_key == "dup"


async def test_same_request_under_a_taken_key_merges_into_the_earlier_job(
    tmp_path: Path, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    async with session_factory.begin() as s:
        holder, _ = await repo.create_job(
            s, repo.NewJob("basic", idempotency_key="same", request_fingerprint="c" * 64)
        )
    late = finished_job(idempotency_key="same", fingerprint="c" * 64)
    replay = replayer(tmp_path, session_factory)
    replay.outbox.append(OutboxEntry(late, None))
    assert await replay.drain_once() == 1
    assert await counts(session_factory) == (1, 0, 0), "no second job"
    assert replay.outbox.merged_into(job_id(late)) == holder.id


async def test_poison_entries_are_quarantined_and_the_rest_lands(
    tmp_path: Path, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """A NUL byte PostgreSQL text cannot hold, and a truncated file, both oldest: the good
    entries behind them still land, the bad ones wait in failed/ with their error."""
    replay = replayer(tmp_path, session_factory)
    nul = finished_job(client_ref="bad\x00ref")
    replay.outbox.append(OutboxEntry(nul, None))
    truncated = replay.outbox.directory / f"{uuid.uuid4()}.json"
    truncated.write_bytes(OutboxEntry(finished_job(), None).to_json()[:40])
    good = [finished_job() for _ in range(3)]
    for job in good:
        replay.outbox.append(OutboxEntry(job, None))
    assert await replay.drain_once() == 3
    assert replay.outbox.backlog() == 0
    assert replay.outbox.failed_count() == 2
    failed = {f.job_id: f.error for f in replay.outbox.failed()}
    assert "DataError" in failed[str(job_id(nul))] or "NUL" in failed[str(job_id(nul))]
    assert "unreadable" in failed[truncated.stem]
    assert await counts(session_factory) == (3, 3, 0)

    replay.outbox.retry(str(job_id(nul)))  # an operator retries: still poison, back aside
    assert await replay.drain_once() == 0
    assert replay.outbox.failed_count() == 2


async def test_corrupt_entry_reads_as_absent(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    broken = uuid.uuid4()
    (outbox.directory / f"{broken}.json").write_bytes(b"{not json")
    assert outbox.get(broken) is None


async def test_replay_drops_media_whose_file_is_gone(
    tmp_path: Path, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    replay = replayer(tmp_path, session_factory)  # and no file under the media's key
    job = finished_job()
    replay.outbox.append(OutboxEntry(job, media()))
    assert await replay.drain_once() == 1
    async with session_factory() as s:
        stored = await repo.get_job(s, job_id(job))
    assert stored is not None and stored.media_file_id is None
    assert await counts(session_factory) == (1, 1, 0)  # no live row without its file
