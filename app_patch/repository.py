"""History writes and reads on PostgreSQL (no caching here; see the cache package)."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, cast

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import selectinload
from sqlalchemy.pool import PoolProxiedConnection

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
    returned = await session.execute(stmt.returning(*_JOB_COLUMNS))
    row = returned.mappings().one_or_none()
    if row is None:
        return await _key_holder(session, values), False
    return JobOut.model_validate({**row, "result": None}), True


async def _key_holder(session: AsyncSession, values: dict[str, Any]) -> JobOut:
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


# ---- the finished-job writes: fixed SQL, sent as is -------------------------------------
# No ORM unit of work and no per-call compilation on the API's hot path; psycopg prepares each
# statement server-side once a connection has run it a few times (its prepare_threshold).
# The job and its result go in one statement (a data-modifying CTE): one round trip.

_JOB_INSERT = {
    "id": "uuid",
    "media_file_id": "uuid",
    "analysis_type": "text",
    "status": "job_status",
    "params": "jsonb",
    "client_ref": "text",
    "idempotency_key": "text",
    "request_fingerprint": "text",
    "created_at": "timestamptz",
    "started_at": "timestamptz",
    "finished_at": "timestamptz",
    "error": "text",
    "attempts": "int4",
}  # column -> parameter type: the statements below never depend on psycopg's type guess
_RESULT_INSERT = {
    "id": "uuid",
    "job_id": "uuid",
    "result": "jsonb",
    "summary": "text",
    "engine_name": "text",
    "engine_version": "text",
    "duration_ms": "float8",
}
_JOB_OUT_COLUMNS = tuple(name for name in JobOut.model_fields if name != "result")


def _binds(prefix: str, columns: dict[str, str], array: str = "") -> str:
    """``%(<prefix><column>)s::<type>`` for each column (``array="[]"``: arrays of them)."""
    return ", ".join(f"%({prefix}{name})s::{kind}{array}" for name, kind in columns.items())


_JOBS = f"analysis_jobs ({', '.join(_JOB_INSERT)})"
_RESULTS = f"analysis_results ({', '.join(_RESULT_INSERT)})"
_INSERT_JOB = (
    f"INSERT INTO {_JOBS} VALUES ({_binds('', _JOB_INSERT)})"
    " ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
    f" RETURNING {', '.join(_JOB_OUT_COLUMNS)}"
)  # no row back: the key names another job (an id that exists is an IntegrityError)
_RECORD_FAILED = f"{_INSERT_JOB}, NULL::timestamptz"
_RECORD_SUCCEEDED = (
    f"WITH job AS ({_INSERT_JOB}),"
    f" result AS (INSERT INTO {_RESULTS}"
    f" SELECT {_binds('result_', _RESULT_INSERT)} FROM job RETURNING created_at)"
    f" SELECT {', '.join(f'job.{name}' for name in _JOB_OUT_COLUMNS)},"
    " (SELECT created_at FROM result) FROM job"
)  # a row: the job's columns (_JOB_OUT_COLUMNS), then its result's created_at
_RECORD_MANY = (
    f"WITH job AS (INSERT INTO {_JOBS}"
    f" SELECT * FROM unnest({_binds('job_', _JOB_INSERT, '[]')})"
    " ON CONFLICT DO NOTHING RETURNING id),"
    f" result AS (INSERT INTO {_RESULTS}"
    f" SELECT * FROM unnest({_binds('result_', _RESULT_INSERT, '[]')})"
    f" AS r ({', '.join(_RESULT_INSERT)}) WHERE r.job_id IN (SELECT id FROM job))"
    " SELECT count(*) FROM job"
)  # a job skipped on conflict (id or key) is skipped with its result


def _job_params(values: dict[str, Any]) -> dict[str, Any]:
    """``FinishedJob.row_values()`` as driver parameters."""
    return values | {"params": Jsonb(values["params"]), "status": values["status"].value}


def _result_params(result: ResultIn, job_id: uuid.UUID) -> dict[str, Any]:
    return {
        "result_id": uuid.uuid4(),
        "result_job_id": job_id,
        "result_result": Jsonb(result.result),
        "result_summary": result.summary,
        "result_engine_name": result.engine_name,
        "result_engine_version": result.engine_version,
        "result_duration_ms": result.duration_ms,
    }


async def _fetch_one(
    session: AsyncSession, sql: str, params: dict[str, Any]
) -> tuple[Any, ...] | None:
    """Run driver SQL on the session's connection, in its transaction; its first row.

    Straight on psycopg's connection: no greenlet hop per statement, no SQLAlchemy execution
    context or result metadata (together most of the write's cost above the driver). Errors
    still come out as SQLAlchemy would raise them (``_as_sqlalchemy_error``).
    """
    sync_session = session.sync_session
    if sync_session.autoflush and (sync_session.new or sync_session.dirty or sync_session.deleted):
        await session.flush()  # what session.execute would do for pending objects
    connection = await session.connection()
    driver = cast("psycopg.AsyncConnection[Any]", _pooled(connection).driver_connection)
    try:
        cursor = await driver.execute(sql, params)
        row: tuple[Any, ...] | None = await cursor.fetchone()
    except psycopg.Error as exc:
        raise await _as_sqlalchemy_error(connection, sql, params, exc) from exc
    except BaseException as exc:
        if not isinstance(exc, Exception) or isinstance(exc, TimeoutError):
            await connection.invalidate()  # cut off mid-statement: the protocol state is unknown
        raise
    return row


def _pooled(connection: AsyncConnection) -> PoolProxiedConnection:
    assert connection.sync_connection is not None  # session.connection() began it
    return connection.sync_connection.connection


async def _as_sqlalchemy_error(
    connection: AsyncConnection, sql: str, params: dict[str, Any], exc: psycopg.Error
) -> StatementError:
    """What SQLAlchemy makes of a driver error (``IntegrityError``, ``OperationalError``...,
    parameters hidden as the engine says); a lost connection is invalidated, as it would."""
    dialect = connection.dialect
    lost = dialect.is_disconnect(cast(Any, exc), _pooled(connection).dbapi_connection, None)
    if lost:
        await connection.invalidate(exc)
    return DBAPIError.instance(
        sql,
        params,
        exc,
        dialect.loaded_dbapi.Error,
        hide_parameters=connection.sync_engine.hide_parameters,
        connection_invalidated=lost,
        dialect=dialect,
    )


async def record_finished(session: AsyncSession, finished: FinishedJob) -> tuple[JobOut, bool]:
    """One statement for an analysis that already ran: the job, finished, with its result.

    What a synchronous API records (no queued/running rows for anyone to see); an idempotency
    key already used by the same request returns that job instead, untouched, and one used by
    another request raises ``IdempotencyConflictError``. Returns ``(job, created)``.
    """
    values = finished.row_values()
    result = finished.result
    if result is None:
        row = await _fetch_one(session, _RECORD_FAILED, _job_params(values))
    else:
        params = _job_params(values) | _result_params(result, values["id"])
        row = await _fetch_one(session, _RECORD_SUCCEEDED, params)
    if row is None:  # the key names another job (the partial unique index decided)
        return await _key_holder(session, values), False
    stored = None
    if result is not None:
        stored = ResultOut(**result.model_dump(), created_at=row[-1])
    job = dict(zip(_JOB_OUT_COLUMNS, row, strict=False))
    return JobOut.model_validate(job | {"result": stored}), True


async def record_finished_many(session: AsyncSession, jobs: Sequence[FinishedJob]) -> int:
    """``record_finished`` for a batch, in one statement (jobs and results as arrays).

    For bulk writers (imports, backfills). A job whose id or idempotency key already exists is
    skipped with its result; returns how many jobs were inserted.
    """
    if not jobs:
        return 0
    columns: dict[str, list[Any]] = {f"job_{name}": [] for name in _JOB_INSERT}
    columns |= {f"result_{name}": [] for name in _RESULT_INSERT}
    job_columns = [(name, columns[f"job_{name}"]) for name in _JOB_INSERT]
    for item in jobs:
        values = _job_params(item.row_values())
        for name, column in job_columns:
            column.append(values[name])
        if item.result is not None:
            for name, value in _result_params(item.result, values["id"]).items():
                columns[name].append(value)
    inserted = await _fetch_one(session, _RECORD_MANY, columns)
    assert inserted is not None
    return int(inserted[0])


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
