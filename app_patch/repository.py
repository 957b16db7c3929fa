"""History writes and reads on PostgreSQL (no caching here; see cache.py)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app_patch.models import AnalysisJob, AnalysisResult, JobStatus
from app_patch.schemas import (
    HistoryFilter,
    HistoryPage,
    JobOut,
    ResultIn,
    ResultOut,
    decode_cursor,
    encode_cursor,
)

_JOB_COLUMNS = tuple(AnalysisJob.__table__.c)


class JobNotFoundError(LookupError):
    pass


class InvalidTransitionError(ValueError):
    """A status change that the job's current state does not allow."""


@dataclass(frozen=True)
class NewJob:
    analysis_type: str
    media_file_id: uuid.UUID | None = None
    params: dict[str, Any] | None = None
    client_ref: str | None = None
    idempotency_key: str | None = None
    job_id: uuid.UUID | None = None


def _new_job_values(new: NewJob, status: JobStatus) -> dict[str, Any]:
    return {
        "id": new.job_id or uuid.uuid4(),
        "analysis_type": new.analysis_type,
        "media_file_id": new.media_file_id,
        "params": new.params or {},
        "client_ref": new.client_ref,
        "idempotency_key": new.idempotency_key,
        "status": status,
    }


async def _insert_job(session: AsyncSession, values: dict[str, Any]) -> tuple[JobOut, bool]:
    """INSERT ... RETURNING the row; on an idempotency-key conflict, the job holding the key.

    Safe under concurrency: the partial unique index decides who wins.
    """
    stmt = insert(AnalysisJob).values(**values)
    if values["idempotency_key"] is not None:
        stmt = stmt.on_conflict_do_nothing(
            index_elements=["idempotency_key"],
            index_where=AnalysisJob.idempotency_key.is_not(None),
        )
    returned = await session.execute(stmt.returning(*_JOB_COLUMNS))
    row = returned.mappings().one_or_none()
    if row is None:
        existing = await session.scalar(
            select(AnalysisJob.id).where(AnalysisJob.idempotency_key == values["idempotency_key"])
        )
        assert existing is not None  # the conflicting row is committed, so it is visible
        return await get_job_or_raise(session, existing), False
    return JobOut.model_validate({**row, "result": None}), True


async def _insert_result(session: AsyncSession, job_id: uuid.UUID, result: ResultIn) -> ResultOut:
    returned = await session.execute(
        insert(AnalysisResult)
        .values(id=uuid.uuid4(), job_id=job_id, **result.model_dump())
        .returning(AnalysisResult.created_at)
    )
    return ResultOut(**result.model_dump(), created_at=returned.scalar_one())


async def create_job(session: AsyncSession, new: NewJob) -> tuple[JobOut, bool]:
    """Insert a queued job; with an idempotency key already used, return that job instead.

    Returns ``(job, created)``.
    """
    return await _insert_job(session, _new_job_values(new, JobStatus.queued))


async def record_finished(
    session: AsyncSession,
    new: NewJob,
    *,
    started_at: datetime,
    finished_at: datetime,
    result: ResultIn | None,
    error: str | None = None,
) -> tuple[JobOut, bool]:
    """One statement pair for an analysis that already ran: the job, finished, with its result.

    What a synchronous API records (no queued/running rows for anyone to see); an idempotency
    key already used returns that job instead, untouched. Returns ``(job, created)``.
    """
    status = JobStatus.succeeded if result is not None else JobStatus.failed
    values = _new_job_values(new, status) | {
        "created_at": started_at,
        "started_at": started_at,
        "finished_at": finished_at,
        "error": error,
        "attempts": 1,
    }
    job, created = await _insert_job(session, values)
    if created and result is not None:
        job = job.model_copy(update={"result": await _insert_result(session, job.id, result)})
    return job, created


@dataclass(frozen=True)
class FinishedJob:
    new: NewJob
    started_at: datetime
    finished_at: datetime
    result: ResultIn | None
    error: str | None = None


async def record_finished_many(session: AsyncSession, jobs: Sequence[FinishedJob]) -> int:
    """``record_finished`` for a batch, in two multi-row statements (jobs, then results).

    For bulk writers (imports, backfills). A job whose id or idempotency key already exists is
    skipped with its result; returns how many jobs were inserted.
    """
    if not jobs:
        return 0
    rows = []
    for item in jobs:
        new = replace(item.new, job_id=item.new.job_id or uuid.uuid4())
        status = JobStatus.succeeded if item.result is not None else JobStatus.failed
        rows.append(
            _new_job_values(new, status)
            | {
                "created_at": item.started_at,
                "started_at": item.started_at,
                "finished_at": item.finished_at,
                "error": item.error,
                "attempts": 1,
            }
        )
    inserted = set(
        (
            await session.scalars(
                insert(AnalysisJob)
                .on_conflict_do_nothing()
                .returning(AnalysisJob.id),  # a set: ordered RETURNING would unbatch it
                rows,
            )
        ).all()
    )
    results = [
        {"id": uuid.uuid4(), "job_id": row["id"], **item.result.model_dump()}
        for row, item in zip(rows, jobs, strict=True)
        if item.result is not None and row["id"] in inserted
    ]
    if results:
        await session.execute(insert(AnalysisResult), results)
    return len(inserted)


async def mark_running(session: AsyncSession, job_id: uuid.UUID) -> JobOut:
    return await _transition(
        session,
        job_id,
        allowed_from=(JobStatus.queued, JobStatus.running),
        status=JobStatus.running,
        started_at=func.now(),
        attempts=AnalysisJob.attempts + 1,
    )


async def mark_succeeded(session: AsyncSession, job_id: uuid.UUID, result: ResultIn) -> JobOut:
    job = await _transition(
        session,
        job_id,
        allowed_from=(JobStatus.queued, JobStatus.running),
        status=JobStatus.succeeded,
        finished_at=func.now(),
        started_at=func.coalesce(AnalysisJob.started_at, func.now()),
        error=None,
    )
    return job.model_copy(update={"result": await _insert_result(session, job_id, result)})


async def mark_failed(session: AsyncSession, job_id: uuid.UUID, error: str) -> JobOut:
    return await _transition(
        session,
        job_id,
        allowed_from=(JobStatus.queued, JobStatus.running),
        status=JobStatus.failed,
        finished_at=func.now(),
        started_at=func.coalesce(AnalysisJob.started_at, func.now()),
        error=error,
    )


async def _transition(
    session: AsyncSession,
    job_id: uuid.UUID,
    *,
    allowed_from: tuple[JobStatus, ...],
    **values: Any,
) -> JobOut:
    """UPDATE ... RETURNING the new row (no re-read); a finished job has no way back."""
    changed = await session.execute(
        update(AnalysisJob)
        .where(AnalysisJob.id == job_id, AnalysisJob.status.in_(allowed_from))
        .values(**values)
        .returning(*_JOB_COLUMNS)
    )
    row = changed.mappings().one_or_none()
    if row is not None:
        return JobOut.model_validate({**row, "result": None})
    current = await session.scalar(select(AnalysisJob.status).where(AnalysisJob.id == job_id))
    if current is None:
        raise JobNotFoundError(str(job_id))
    raise InvalidTransitionError(
        f"job {job_id} is {current.value}; cannot become {values['status']}"
    )


async def get_job(session: AsyncSession, job_id: uuid.UUID) -> JobOut | None:
    """One job with its result, or None."""
    job = await session.scalar(
        select(AnalysisJob)
        .options(selectinload(AnalysisJob.result))
        .where(AnalysisJob.id == job_id)
        .execution_options(populate_existing=True)
    )
    return JobOut.model_validate(job) if job is not None else None


async def get_job_or_raise(session: AsyncSession, job_id: uuid.UUID) -> JobOut:
    job = await get_job(session, job_id)
    if job is None:
        raise JobNotFoundError(str(job_id))
    return job


async def list_history(
    session: AsyncSession,
    *,
    limit: int = 50,
    cursor: str | None = None,
    filters: HistoryFilter | None = None,
) -> HistoryPage:
    """Newest first, keyset-paginated on ``(created_at, id)``.

    A cursor names the last row seen, so rows inserted while a client pages never shift
    the pages it has not read yet: each row that existed when paging began shows up once.
    """
    filters = filters or HistoryFilter()
    query = (
        select(AnalysisJob)
        .options(selectinload(AnalysisJob.result))
        .order_by(AnalysisJob.created_at.desc(), AnalysisJob.id.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        after_created, after_id = decode_cursor(cursor)
        query = query.where(
            tuple_(AnalysisJob.created_at, AnalysisJob.id) < tuple_(after_created, after_id)
        )
    if filters.status is not None:
        query = query.where(AnalysisJob.status == filters.status)
    if filters.analysis_type is not None:
        query = query.where(AnalysisJob.analysis_type == filters.analysis_type)
    if filters.created_from is not None:
        query = query.where(AnalysisJob.created_at >= filters.created_from)
    if filters.created_to is not None:
        query = query.where(AnalysisJob.created_at < filters.created_to)

    rows = list((await session.scalars(query)).all())
    has_more = len(rows) > limit
    items = [JobOut.model_validate(row) for row in rows[:limit]]
    next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if has_more else None
    return HistoryPage(items=items, next_cursor=next_cursor)


@dataclass(frozen=True)
class MediaSnapshot:
    sha256: str
    size_bytes: int
    content_type: str
    storage_key: str
    original_name: str | None = None


async def upsert_job_snapshot(
    session: AsyncSession, job: JobOut, media_file_id: uuid.UUID | None
) -> bool:
    """Write a job (and its result) exactly as the snapshot says; replaying twice is a no-op.

    Used by the outbox replayer. Returns False when an idempotency key was already taken by
    another job (the snapshot is then stored without its key, so nothing is lost).
    """
    key_kept = True
    idempotency_key = job.idempotency_key
    if idempotency_key is not None:
        holder = await session.scalar(
            select(AnalysisJob.id).where(AnalysisJob.idempotency_key == idempotency_key)
        )
        if holder is not None and holder != job.id:
            idempotency_key, key_kept = None, False
    values = job.model_dump(exclude={"result", "media_file_id", "idempotency_key"})
    values.update(media_file_id=media_file_id, idempotency_key=idempotency_key)
    stmt = insert(AnalysisJob).values(**values)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={col: stmt.excluded[col] for col in values if col not in {"id", "created_at"}},
        )
    )
    if job.result is not None:
        await session.execute(
            insert(AnalysisResult)
            .values(id=uuid.uuid4(), job_id=job.id, **job.result.model_dump())
            .on_conflict_do_nothing(index_elements=["job_id"])
        )
    return key_kept
