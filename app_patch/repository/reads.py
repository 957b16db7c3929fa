"""History reads: one job with its result, and the keyset-paginated history."""

from __future__ import annotations

import uuid

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app_patch.models import AnalysisJob
from app_patch.schemas import HistoryFilter, HistoryPage, JobOut, decode_cursor, encode_cursor


class JobNotFoundError(LookupError):
    pass


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
