"""The finished-job writes (one statement each) keep the history's rules on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch import repository as repo
from app_patch.db import create_engine, create_session_factory, is_database_outage
from app_patch.models import AnalysisResult, JobStatus, MediaFile
from app_patch.schemas import JobOut, ResultIn
from app_patch.settings import DatabaseSettings
from tests.integration.history_data import a_result

pytestmark = pytest.mark.usefixtures("clean_db")

Sessions = async_sessionmaker[AsyncSession]


def finished(
    result: ResultIn | None = None, *, error: str | None = None, **new: object
) -> repo.FinishedJob:
    started = datetime.now(UTC) - timedelta(seconds=1)
    job = repo.NewJob(**({"analysis_type": "basic"} | new))  # type: ignore[arg-type]
    return repo.FinishedJob(job, started, datetime.now(UTC), result, error)


async def record(sessions: Sessions, item: repo.FinishedJob) -> tuple[JobOut, bool]:
    async with sessions.begin() as s:
        return await repo.record_finished(s, item)


async def counts(sessions: Sessions) -> tuple[int, int]:
    async with sessions() as s:
        jobs = await s.scalar(text("SELECT count(*) FROM analysis_jobs"))
        results = await s.scalar(select(func.count()).select_from(AnalysisResult))
    return int(jobs or 0), int(results or 0)


async def a_media_file(sessions: Sessions) -> uuid.UUID:
    async with sessions.begin() as s:
        media = MediaFile(
            sha256="ef" * 32, size_bytes=3, content_type="text/plain", storage_key="uploads/x"
        )
        s.add(media)
    return media.id


async def test_the_answer_is_the_stored_row(session_factory: Sessions) -> None:
    media_id = await a_media_file(session_factory)
    item = finished(
        a_result(width=3),
        media_file_id=media_id,
        params={"lang": "en"},
        client_ref="c-1",
        idempotency_key="k-answer",
        request_fingerprint="f" * 64,
    )
    job, created = await record(session_factory, item)
    assert created
    async with session_factory() as s:
        stored = await repo.get_job(s, job.id)
    assert stored == job
    assert job.media_file_id == media_id and job.params == {"lang": "en"}
    assert job.client_ref == "c-1" and job.idempotency_key == "k-answer"
    assert job.status is JobStatus.succeeded and job.attempts == 1 and job.error is None
    assert job.created_at == job.started_at == item.started_at
    assert job.finished_at == item.finished_at
    assert job.result is not None and job.result.result["width"] == 3
    assert await counts(session_factory) == (1, 1)


async def test_a_failed_analysis_has_no_result_row(session_factory: Sessions) -> None:
    job, created = await record(session_factory, finished(error="not an image"))
    assert created and job.status is JobStatus.failed and job.result is None
    assert job.error == "not an image"
    async with session_factory() as s:
        assert await repo.get_job(s, job.id) == job
    assert await counts(session_factory) == (1, 0)


async def test_a_key_replayed_by_the_same_request_returns_the_first_job(
    session_factory: Sessions,
) -> None:
    first, _ = await record(
        session_factory, finished(a_result(), idempotency_key="k", request_fingerprint="a" * 64)
    )
    for fingerprint in ("a" * 64, None):  # an unknown fingerprint matches anything
        again, created = await record(
            session_factory,
            finished(a_result(other=1), idempotency_key="k", request_fingerprint=fingerprint),
        )
        assert not created and again == first
    assert await counts(session_factory) == (1, 1)


async def test_a_key_reused_by_another_request_is_a_conflict(session_factory: Sessions) -> None:
    await record(
        session_factory, finished(a_result(), idempotency_key="k", request_fingerprint="a" * 64)
    )
    for item in (
        finished(a_result(), idempotency_key="k", request_fingerprint="b" * 64),
        finished(error="boom", idempotency_key="k", request_fingerprint="b" * 64),
    ):
        with pytest.raises(repo.IdempotencyConflictError):
            await record(session_factory, item)
    assert await counts(session_factory) == (1, 1)


async def test_concurrent_writes_of_one_key_make_one_job_and_one_result(
    session_factory: Sessions,
) -> None:
    item = finished(a_result(), idempotency_key="race", request_fingerprint="c" * 64)
    answers = await asyncio.gather(*(record(session_factory, item) for _ in range(12)))
    assert len({job.id for job, _ in answers}) == 1
    assert sum(created for _, created in answers) == 1
    assert all(job.result is not None for job, _ in answers)
    assert await counts(session_factory) == (1, 1)


async def test_errors_stay_sqlalchemy_errors_without_values(session_factory: Sessions) -> None:
    item = finished(a_result(), job_id=uuid.uuid4())
    await record(session_factory, item)
    with pytest.raises(IntegrityError):  # an id that exists is not an idempotent replay
        await record(session_factory, item)
    with pytest.raises(IntegrityError):  # the media file must exist
        await record(session_factory, finished(a_result(), media_file_id=uuid.uuid4()))
    with pytest.raises(DBAPIError) as too_long:
        await record(session_factory, finished(a_result(secret="s3cr3t"), analysis_type="x" * 65))
    assert "s3cr3t" not in str(too_long.value)
    assert await counts(session_factory) == (1, 1)


async def test_a_lost_connection_is_an_outage_and_is_not_reused(session_factory: Sessions) -> None:
    with pytest.raises(OperationalError) as lost:
        async with session_factory.begin() as s:
            pid = await s.scalar(text("SELECT pg_backend_pid()"))
            async with session_factory() as other:
                await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            await repo.record_finished(s, finished(a_result()))
    assert lost.value.connection_invalidated and is_database_outage(lost.value)
    job, created = await record(session_factory, finished(a_result()))  # the pool recovers
    assert created and job.result is not None


async def test_pending_objects_are_flushed_first(session_factory: Sessions) -> None:
    async with session_factory.begin() as s:
        media = MediaFile(
            id=uuid.uuid4(),
            sha256="12" * 32,
            size_bytes=1,
            content_type="text/plain",
            storage_key="uploads/y",
        )
        s.add(media)
        job, _ = await repo.record_finished(s, finished(a_result(), media_file_id=media.id))
    assert job.media_file_id == media.id


async def test_the_write_is_prepared_on_a_connection_that_repeats_it(
    migrated_url: str,
) -> None:
    engine = create_engine(DatabaseSettings(pool_size=1, max_overflow=0), migrated_url)
    sessions = create_session_factory(engine)
    try:
        for _ in range(8):
            await record(sessions, finished(a_result()))
        async with sessions() as s:
            prepared = await s.scalar(
                text(
                    "SELECT count(*) FROM pg_prepared_statements"
                    " WHERE statement LIKE 'WITH job AS (INSERT INTO analysis_jobs%'"
                )
            )
        assert prepared == 1
    finally:
        await engine.dispose()


async def test_many_writes_new_jobs_and_skips_known_ones(session_factory: Sessions) -> None:
    media_id = await a_media_file(session_factory)
    async with session_factory.begin() as s:
        await repo.record_finished(s, finished(a_result(), idempotency_key="taken"))
    batch = [finished(a_result(i=i), job_id=uuid.uuid4(), media_file_id=media_id) for i in range(5)]
    batch += [
        finished(error="no image", job_id=uuid.uuid4()),
        finished(a_result(), idempotency_key="taken"),  # another job holds the key
        finished(a_result(first=True), idempotency_key="twice"),
        finished(a_result(first=False), idempotency_key="twice"),  # same key in the batch
    ]
    async with session_factory.begin() as s:
        assert await repo.record_finished_many(s, batch) == 7
    assert await counts(session_factory) == (8, 7)
    async with session_factory.begin() as s:  # a replay inserts nothing
        assert await repo.record_finished_many(s, batch) == 0
    assert await counts(session_factory) == (8, 7)
    async with session_factory() as s:
        third = await repo.get_job(s, batch[2].new.job_id)  # type: ignore[arg-type]
        failed = await repo.get_job(s, batch[5].new.job_id)  # type: ignore[arg-type]
        twice = await repo.job_by_key(s, "twice")
    assert third is not None and third.media_file_id == media_id
    assert third.result is not None and third.result.result["i"] == 2
    assert third.status is JobStatus.succeeded and third.started_at == batch[2].started_at
    assert failed is not None and failed.result is None and failed.error == "no image"
    assert twice is not None and twice[0].result is not None
    assert twice[0].result.result["first"] is True


async def test_many_without_results(session_factory: Sessions) -> None:
    batch = [finished(error=f"e{i}") for i in range(3)]
    async with session_factory.begin() as s:
        assert await repo.record_finished_many(s, batch) == 3
        assert await repo.record_finished_many(s, []) == 0
    assert await counts(session_factory) == (3, 0)
