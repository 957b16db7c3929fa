"""Job rows to write: a new or finished job's values, creating one, its idempotency key."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app_patch.models import AnalysisJob, JobStatus
from app_patch.repository.reads import get_job_or_raise
from app_patch.schemas import JobOut, ResultIn, ResultOut

JOB_COLUMNS = tuple(AnalysisJob.__table__.c)


@dataclass(frozen=True)
class NewJob:
    analysis_type: str
    media_file_id: uuid.UUID | None = None
    params: dict[str, Any] | None = None
    client_ref: str | None = None
    idempotency_key: str | None = None
    job_id: uuid.UUID | None = None
    request_fingerprint: str | None = None


class IdempotencyConflictError(ValueError):
    """An Idempotency-Key already names a job made from a different request (HTTP 409)."""

    @classmethod
    def reused(cls) -> IdempotencyConflictError:
        return cls("the Idempotency-Key was used for another request (other file or fields)")


def _new_job_values(new: NewJob, status: JobStatus) -> dict[str, Any]:
    return {
        "id": new.job_id or uuid.uuid4(),
        "analysis_type": new.analysis_type,
        "media_file_id": new.media_file_id,
        "params": new.params or {},
        "client_ref": new.client_ref,
        "idempotency_key": new.idempotency_key,
        "request_fingerprint": new.request_fingerprint,
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
    returned = await session.execute(stmt.returning(*JOB_COLUMNS))
    row = returned.mappings().one_or_none()
    if row is None:
        return await key_holder(session, values), False
    return JobOut.model_validate({**row, "result": None}), True


async def key_holder(session: AsyncSession, values: dict[str, Any]) -> JobOut:
    """The job whose idempotency key made an insert of ``values`` do nothing, when it was made
    by the same request; ``IdempotencyConflictError`` when by another."""
    holder = await job_by_key(session, values["idempotency_key"])
    assert holder is not None  # the conflicting row is committed, so it is visible
    job, fingerprint = holder
    if not same_request(fingerprint, values["request_fingerprint"]):
        raise IdempotencyConflictError.reused()
    return job


def same_request(held: str | None, asked: str | None) -> bool:
    """Unknown fingerprints (jobs written before fingerprints existed) match anything."""
    return held is None or asked is None or held == asked


async def job_by_key(session: AsyncSession, key: str) -> tuple[JobOut, str | None] | None:
    """The job an idempotency key names, with the fingerprint of the request that made it."""
    found = (
        await session.execute(
            select(AnalysisJob.id, AnalysisJob.request_fingerprint).where(
                AnalysisJob.idempotency_key == key
            )
        )
    ).one_or_none()
    if found is None:
        return None
    return await get_job_or_raise(session, found.id), found.request_fingerprint


async def create_job(session: AsyncSession, new: NewJob) -> tuple[JobOut, bool]:
    """Insert a queued job; with an idempotency key already used, return that job instead.

    Returns ``(job, created)``.
    """
    return await _insert_job(session, _new_job_values(new, JobStatus.queued))


@dataclass(frozen=True)
class FinishedJob:
    """An analysis that already ran: the one shape every writer of a finished job uses (the
    API's transaction, the outbox while PostgreSQL is down, its replay, bulk writers)."""

    new: NewJob
    started_at: datetime
    finished_at: datetime
    result: ResultIn | None
    error: str | None = None

    @property
    def status(self) -> JobStatus:
        return JobStatus.succeeded if self.result is not None else JobStatus.failed

    def row_values(self) -> dict[str, Any]:
        """The ``analysis_jobs`` row (a job id is drawn here when the caller gave none)."""
        new = self.new if self.new.job_id else replace(self.new, job_id=uuid.uuid4())
        return _new_job_values(new, self.status) | {
            "created_at": self.started_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "attempts": 1,
        }

    def as_job(self, media_file_id: uuid.UUID | None = None) -> JobOut:
        """The job as the history will show it (for answers given before PostgreSQL has it)."""
        values = self.row_values()
        values.pop("request_fingerprint")
        result = None
        if self.result is not None:
            result = ResultOut(**self.result.model_dump(), created_at=self.finished_at)
        return JobOut(**(values | {"media_file_id": media_file_id}), result=result)
