"""A queued job's status changes (running, then succeeded with its result or failed)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app_patch.models import AnalysisJob, AnalysisResult, JobStatus
from app_patch.repository.jobs import JOB_COLUMNS
from app_patch.repository.reads import JobNotFoundError
from app_patch.schemas import JobOut, ResultIn, ResultOut

_UNFINISHED = (JobStatus.queued, JobStatus.running)


class InvalidTransitionError(ValueError):
    """A status change that the job's current state does not allow."""


async def mark_running(session: AsyncSession, job_id: uuid.UUID) -> JobOut:
    return await _transition(
        session,
        job_id,
        allowed_from=_UNFINISHED,
        status=JobStatus.running,
        started_at=func.now(),
        attempts=AnalysisJob.attempts + 1,
    )


async def mark_succeeded(session: AsyncSession, job_id: uuid.UUID, result: ResultIn) -> JobOut:
    job = await _finish(session, job_id, JobStatus.succeeded, error=None)
    return job.model_copy(update={"result": await _insert_result(session, job_id, result)})


async def mark_failed(session: AsyncSession, job_id: uuid.UUID, error: str) -> JobOut:
    return await _finish(session, job_id, JobStatus.failed, error=error)


async def _finish(
    session: AsyncSession, job_id: uuid.UUID, status: JobStatus, *, error: str | None
) -> JobOut:
    """Succeeded or failed now; a job that never ran counts as started now too."""
    return await _transition(
        session,
        job_id,
        allowed_from=_UNFINISHED,
        status=status,
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
        .returning(*JOB_COLUMNS)
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


async def _insert_result(session: AsyncSession, job_id: uuid.UUID, result: ResultIn) -> ResultOut:
    returned = await session.execute(
        insert(AnalysisResult)
        .values(id=uuid.uuid4(), job_id=job_id, **result.model_dump())
        .returning(AnalysisResult.created_at)
    )
    return ResultOut(**result.model_dump(), created_at=returned.scalar_one())
