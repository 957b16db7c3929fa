"""Builders of history data the integration tests share: a result, a finished job for the
outbox, a job written straight to PostgreSQL (no tests here)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch import repository as repo
from app_patch.schemas import JobOut, ResultIn

Sessions = async_sessionmaker[AsyncSession]


def a_result(**extra: object) -> ResultIn:
    return ResultIn(
        result={"sha256": "ab" * 32, **extra},
        summary="ok",
        engine_name="basic",
        engine_version="1.0",
        duration_ms=1.5,
    )


def finished_job(
    idempotency_key: str | None = None,
    *,
    client_ref: str | None = None,
    fingerprint: str | None = None,
) -> repo.FinishedJob:
    now = datetime.now(UTC)
    new = repo.NewJob(
        "basic",
        client_ref=client_ref,
        idempotency_key=idempotency_key,
        job_id=uuid.uuid4(),
        request_fingerprint=fingerprint,
    )
    result = ResultIn(
        result={"size_bytes": 3},
        summary="3 bytes",
        engine_name="e",
        engine_version="1",
        duration_ms=0.5,
    )
    return repo.FinishedJob(new, now, now, result)


def job_id(job: repo.FinishedJob) -> uuid.UUID:
    assert job.new.job_id is not None
    return job.new.job_id


async def insert_job(sessions: Sessions, **kwargs: Any) -> JobOut:
    """A job written straight to PostgreSQL, so its cache key is cold."""
    async with sessions.begin() as session:
        job, _ = await repo.create_job(session, repo.NewJob(analysis_type="basic", **kwargs))
    return job
