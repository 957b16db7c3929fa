"""The history write as fastapi/full-stack-fastapi-template writes rows: the peer of ours.

That template's way, on our tables: SQLModel table models, a synchronous engine on psycopg 3
(``create_engine(url)`` with its defaults), one ``Session`` per request and, per item,
``session.add(...)``, ``session.commit()``, ``session.refresh(job)`` (``crud.create_item``),
in a sync route, i.e. in Starlette's threadpool (``run_in_threadpool``: anyio's 40 threads).
The result row is made like the template makes a row from its input model:
``Model.model_validate(item_in, update={...})``.

Needs the ``dev`` extra (``sqlmodel``); imported only by the benchmark that runs it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import Column, DateTime, Enum
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, create_engine
from starlette.concurrency import run_in_threadpool

from app_patch.models import JobStatus
from app_patch.schemas import ResultIn
from bench.common import Timed, run_workers


def _timestamp() -> Any:
    return Field(default=None, sa_type=DateTime(timezone=True))


class PeerJob(SQLModel, table=True):
    """``analysis_jobs`` as a SQLModel table (the columns a finished job writes)."""

    __tablename__ = "analysis_jobs"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    analysis_type: str = Field(max_length=64)
    status: JobStatus = Field(
        sa_column=Column(
            Enum(
                JobStatus,
                name="job_status",
                values_callable=lambda e: [m.value for m in e],
                create_type=False,
            ),
            nullable=False,
        )
    )
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    client_ref: str | None = Field(default=None, max_length=255)
    created_at: dt.datetime | None = _timestamp()
    started_at: dt.datetime | None = _timestamp()
    finished_at: dt.datetime | None = _timestamp()
    attempts: int = 0


class PeerResult(SQLModel, table=True):
    """``analysis_results`` as a SQLModel table."""

    __tablename__ = "analysis_results"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    job_id: uuid.UUID = Field(foreign_key="analysis_jobs.id")
    result: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    summary: str | None = None
    engine_name: str = Field(max_length=64)
    engine_version: str = Field(max_length=64)
    duration_ms: float


def peer_engine(db_url: str) -> Engine:
    """The template's ``core/db.py``: ``create_engine(str(settings.SQLALCHEMY_DATABASE_URI))``."""
    return create_engine(db_url)


def write_finished(engine: Engine, i: int, result_in: ResultIn) -> PeerJob:
    """One request's work, the template's way (``crud.create_item`` + its route)."""
    now = dt.datetime.now(dt.UTC)
    with Session(engine) as session:
        job = PeerJob(
            analysis_type="basic",
            status=JobStatus.succeeded,
            params={"bench": i},
            client_ref="bench",
            created_at=now,
            started_at=now,
            finished_at=now,
            attempts=1,
        )
        session.add(job)
        session.add(PeerResult.model_validate(result_in, update={"job_id": job.id}))
        session.commit()
        session.refresh(job)
        return job


async def run_peer(
    db_url: str, count: int, concurrency: int, result_in: Callable[[], ResultIn], warm_up: int
) -> Timed:
    """``count`` writes from ``concurrency`` callers, each awaiting the threadpool like a sync
    FastAPI route (the request body, ``result_in()``, is parsed on the event loop)."""
    engine = peer_engine(db_url)

    async def work(i: int) -> None:
        await run_in_threadpool(write_finished, engine, i, result_in())

    try:
        await run_workers(warm_up, concurrency, work)
        return await run_workers(count, concurrency, work)
    finally:
        engine.dispose()
