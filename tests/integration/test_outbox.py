"""The durable outbox and its replayer against a real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch import repository as repo
from app_patch.media import MediaStore
from app_patch.models import AnalysisJob, AnalysisResult, JobStatus, MediaFile
from app_patch.resilience import Breaker, Outbox, OutboxEntry, OutboxReplayer, is_database_outage
from app_patch.schemas import JobOut, ResultOut
from app_patch.settings import RetentionSettings, StorageSettings
from app_patch.storage import Storage

pytestmark = pytest.mark.usefixtures("clean_db")


def finished_job(idempotency_key: str | None = None) -> JobOut:
    now = datetime.now(UTC)
    return JobOut(
        id=uuid.uuid4(),
        media_file_id=None,
        analysis_type="basic",
        status=JobStatus.succeeded,
        params={},
        client_ref=None,
        idempotency_key=idempotency_key,
        created_at=now,
        started_at=now,
        finished_at=now,
        error=None,
        attempts=1,
        result=ResultOut(
            result={"size_bytes": 3},
            summary="3 bytes",
            engine_name="e",
            engine_version="1",
            duration_ms=0.5,
            created_at=now,
        ),
    )


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
    assert writer.get(jobs[0].id) == OutboxEntry(jobs[0], media())

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
        stored = await repo.get_job(s, jobs[0].id)
    assert stored is not None and stored.status is JobStatus.succeeded
    assert stored.result is not None and stored.result.result == {"size_bytes": 3}
    assert stored.media_file_id is not None


async def test_taken_idempotency_key_does_not_lose_the_job(
    tmp_path: Path, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    async with session_factory.begin() as s:
        holder, _ = await repo.create_job(s, repo.NewJob("basic", idempotency_key="dup"))
    late = finished_job(idempotency_key="dup")
    replay = replayer(tmp_path, session_factory)
    replay.outbox.append(OutboxEntry(late, None))
    assert await replay.drain_once() == 1
    async with session_factory() as s:
        stored = await repo.get_job(s, late.id)
    assert stored is not None and stored.idempotency_key is None
    assert holder.idempotency_key == "dup"


async def test_corrupt_entry_is_set_aside(
    tmp_path: Path, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    replay = replayer(tmp_path, session_factory)
    (replay.outbox.directory / f"{uuid.uuid4()}.json").write_bytes(b"{not json")
    replay.outbox.append(OutboxEntry(finished_job(), None))
    assert await replay.drain_once() == 1
    assert replay.outbox.backlog() == 0
    assert len(list(replay.outbox.directory.glob("*.corrupt"))) == 1


async def test_replay_drops_media_whose_file_is_gone(
    tmp_path: Path, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    replay = replayer(tmp_path, session_factory)  # and no file under the media's key
    job = finished_job()
    replay.outbox.append(OutboxEntry(job, media()))
    assert await replay.drain_once() == 1
    async with session_factory() as s:
        stored = await repo.get_job(s, job.id)
    assert stored is not None and stored.media_file_id is None
    assert await counts(session_factory) == (1, 1, 0)  # no live row without its file
