"""Replaying a job accepted while PostgreSQL was down (the outbox's write), idempotently."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app_patch.models import AnalysisJob, AnalysisResult
from app_patch.repository.jobs import FinishedJob, job_by_key, same_request


@dataclass(frozen=True)
class MediaSnapshot:
    sha256: str
    size_bytes: int
    content_type: str
    storage_key: str
    original_name: str | None = None


class ReplayOutcome(enum.StrEnum):
    inserted = "inserted"  # the job is in the history now (or was already: a repeated replay)
    merged = "merged"  # its key names an earlier job of the same request: that job stands
    key_dropped = "key_dropped"  # its key names another request's job: stored without it


async def replay_finished(
    session: AsyncSession, finished: FinishedJob, media_file_id: uuid.UUID | None
) -> tuple[ReplayOutcome, uuid.UUID]:
    """Write a job accepted while PostgreSQL was down; replaying it twice is a no-op.

    Returns what happened and the id of the job that now stands for the request.
    """
    values = finished.row_values() | {"media_file_id": media_file_id}
    job_id: uuid.UUID = values["id"]
    key = values["idempotency_key"]
    outcome = ReplayOutcome.inserted
    for _ in range(2):  # at most once more, without the key
        inserted = await session.scalar(
            insert(AnalysisJob).values(**values).on_conflict_do_nothing().returning(AnalysisJob.id)
        )
        if inserted is not None:
            break
        if await session.scalar(select(AnalysisJob.id).where(AnalysisJob.id == job_id)):
            return ReplayOutcome.inserted, job_id  # replayed before
        holder = await job_by_key(session, key) if key is not None else None
        if holder is None:
            raise LookupError(f"job {job_id} conflicts with a row that is not visible")
        if same_request(holder[1], values["request_fingerprint"]):
            return ReplayOutcome.merged, holder[0].id
        values |= {"idempotency_key": None}
        outcome = ReplayOutcome.key_dropped
    if finished.result is not None:
        await session.execute(
            insert(AnalysisResult)
            .values(id=uuid.uuid4(), job_id=job_id, **finished.result.model_dump())
            .on_conflict_do_nothing(index_elements=["job_id"])
        )
    return outcome, job_id
