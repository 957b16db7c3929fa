"""History writes and reads against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch import repository as repo
from app_patch.models import JobStatus
from app_patch.schemas import HistoryFilter, InvalidCursorError, JobOut
from tests.integration.history_data import a_result

pytestmark = pytest.mark.usefixtures("clean_db")

Sessions = async_sessionmaker[AsyncSession]


async def new_job(sessions: Sessions, **kwargs: object) -> tuple[JobOut, bool]:
    async with sessions.begin() as session:
        return await repo.create_job(session, repo.NewJob(analysis_type="basic", **kwargs))  # type: ignore[arg-type]


async def test_idempotent_create_returns_the_same_job(session_factory: Sessions) -> None:
    first, created_first = await new_job(session_factory, idempotency_key="k-1")
    second, created_second = await new_job(session_factory, idempotency_key="k-1")
    assert (created_first, created_second) == (True, False)
    assert second.id == first.id


async def test_concurrent_idempotent_creates_make_one_job(session_factory: Sessions) -> None:
    results = await asyncio.gather(
        *(new_job(session_factory, idempotency_key="race") for _ in range(20))
    )
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_jobs_without_key_are_distinct(session_factory: Sessions) -> None:
    a, _ = await new_job(session_factory)
    b, _ = await new_job(session_factory)
    assert a.id != b.id


async def test_lifecycle_succeeded_keeps_result(session_factory: Sessions) -> None:
    job, _ = await new_job(session_factory, params={"x": 1})
    assert job.status is JobStatus.queued
    async with session_factory.begin() as s:
        running = await repo.mark_running(s, job.id)
    assert running.status is JobStatus.running and running.attempts == 1
    assert running.started_at is not None
    async with session_factory.begin() as s:
        done = await repo.mark_succeeded(s, job.id, a_result(width=3))
    assert done.status is JobStatus.succeeded and done.finished_at is not None
    assert done.result is not None and done.result.result["width"] == 3
    async with session_factory() as s:
        fetched = await repo.get_job(s, job.id)
    assert fetched == done


async def test_failed_job_keeps_its_error(session_factory: Sessions) -> None:
    job, _ = await new_job(session_factory)
    async with session_factory.begin() as s:
        await repo.mark_running(s, job.id)
        failed = await repo.mark_failed(s, job.id, "decoder exploded")
    async with session_factory() as s:
        fetched = await repo.get_job(s, job.id)
    assert fetched is not None and fetched.status is JobStatus.failed
    assert fetched.error == failed.error == "decoder exploded"
    assert fetched.result is None


async def test_finished_job_cannot_go_back(session_factory: Sessions) -> None:
    job, _ = await new_job(session_factory)
    async with session_factory.begin() as s:
        await repo.mark_succeeded(s, job.id, a_result())
    with pytest.raises(repo.InvalidTransitionError):
        async with session_factory.begin() as s:
            await repo.mark_running(s, job.id)
    with pytest.raises(repo.JobNotFoundError):
        async with session_factory.begin() as s:
            await repo.mark_running(s, uuid.uuid4())


async def test_keyset_pages_return_every_row_once_under_concurrent_inserts(
    session_factory: Sessions,
) -> None:
    existing = set()
    for _ in range(5):  # five transactions of 40 jobs: many share a created_at
        async with session_factory.begin() as s:
            for _ in range(40):
                job, _ = await repo.create_job(s, repo.NewJob(analysis_type="basic"))
                existing.add(job.id)

    stop = asyncio.Event()

    async def writer() -> int:
        written = 0
        while not stop.is_set() and written < 500:
            await new_job(session_factory)
            written += 1
            await asyncio.sleep(0)
        return written

    writer_task = asyncio.create_task(writer())
    seen: list[uuid.UUID] = []
    cursor = None
    for _ in range(1000):  # bounded; 200 rows at 7 per page need ~30 pages
        async with session_factory() as s:
            page = await repo.list_history(s, limit=7, cursor=cursor)
        seen.extend(job.id for job in page.items)
        await asyncio.sleep(0.002)
        cursor = page.next_cursor
        if cursor is None:
            break
    stop.set()
    assert await writer_task > 0
    assert len(seen) == len(set(seen)), "a row was returned twice"
    assert existing <= set(seen), "a row that existed before paging was skipped"


async def test_history_filters(session_factory: Sessions) -> None:
    ok, _ = await new_job(session_factory)
    bad, _ = await new_job(session_factory)
    other, _ = await new_job(session_factory)
    async with session_factory.begin() as s:
        await repo.mark_succeeded(s, ok.id, a_result())
        await repo.mark_failed(s, bad.id, "boom")
        await s.execute(
            text(
                "UPDATE analysis_jobs SET analysis_type = 'image', "
                "created_at = now() - interval '2 days' WHERE id = :id"
            ),
            {"id": other.id},
        )

    async def ids(**filters: object) -> set[uuid.UUID]:
        async with session_factory() as s:
            page = await repo.list_history(s, limit=50, filters=HistoryFilter(**filters))
        return {job.id for job in page.items}

    assert await ids(status=JobStatus.succeeded) == {ok.id}
    assert await ids(status=JobStatus.failed) == {bad.id}
    assert await ids(analysis_type="image") == {other.id}
    yesterday = datetime.now(UTC) - timedelta(days=1)
    assert await ids(created_from=yesterday) == {ok.id, bad.id}
    assert await ids(created_to=yesterday) == {other.id}


@pytest.mark.parametrize("cursor", ["", "nonsense", "bm90fGF8dXVpZA", "MjAyNi0wMS0wMXx4"])
async def test_malformed_cursor_is_rejected(session_factory: Sessions, cursor: str) -> None:
    async with session_factory() as s:
        with pytest.raises(InvalidCursorError):
            await repo.list_history(s, cursor=cursor)


async def test_record_finished_writes_job_and_result_once(session_factory: Sessions) -> None:
    started = datetime.now(UTC) - timedelta(seconds=2)
    finished = datetime.now(UTC)
    new = repo.NewJob(analysis_type="basic", idempotency_key="done-1")
    async with session_factory.begin() as s:
        job, created = await repo.record_finished(
            s, repo.FinishedJob(new, started, finished, a_result(width=7))
        )
    async with session_factory.begin() as s:
        again, created_again = await repo.record_finished(
            s, repo.FinishedJob(new, started, finished, None, "late retry")
        )
    assert (created, created_again) == (True, False)
    assert again == job  # the retry neither failed nor overwrote the first outcome
    assert job.status is JobStatus.succeeded and job.attempts == 1
    assert job.started_at == started and job.finished_at == finished
    async with session_factory() as s:
        assert await repo.get_job(s, job.id) == job

    async with session_factory.begin() as s:
        failed, _ = await repo.record_finished(
            s, repo.FinishedJob(repo.NewJob("image"), started, finished, None, "not an image")
        )
    assert failed.status is JobStatus.failed and failed.result is None
    assert failed.error == "not an image"


async def test_record_finished_many_inserts_each_new_job_once(session_factory: Sessions) -> None:
    now = datetime.now(UTC)
    async with session_factory.begin() as s:
        taken, _ = await repo.create_job(s, repo.NewJob("basic", idempotency_key="taken"))
    batch = [
        repo.FinishedJob(repo.NewJob("basic", job_id=uuid.uuid4()), now, now, a_result(i=i))
        for i in range(50)
    ]
    batch.append(
        repo.FinishedJob(repo.NewJob("image", job_id=uuid.uuid4()), now, now, None, "no image")
    )
    batch.append(
        repo.FinishedJob(repo.NewJob("basic", idempotency_key="taken"), now, now, a_result())
    )
    async with session_factory.begin() as s:
        assert await repo.record_finished_many(s, batch) == 51
    async with session_factory.begin() as s:  # replaying the batch inserts nothing
        assert await repo.record_finished_many(s, batch) == 0
    async with session_factory() as s:
        page = await repo.list_history(s, limit=200)
        one = await repo.get_job(s, batch[7].new.job_id)  # type: ignore[arg-type]
        holder = await repo.get_job(s, taken.id)
    assert len(page.items) == 52
    assert one is not None and one.result is not None and one.result.result["i"] == 7
    assert holder is not None and holder.result is None  # the key holder was left alone
