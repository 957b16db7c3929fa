"""The finished-job writes: ``record_finished`` (and its batch form) as fixed SQL, sent as is.

No ORM unit of work and no per-call compilation on the API's hot path; psycopg prepares each
statement server-side once a connection has run it a few times (its prepare_threshold). The
job and its result go in one statement (a data-modifying CTE): one round trip.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy.ext.asyncio import AsyncSession

from app_patch.repository.driver import fetch_one
from app_patch.repository.jobs import FinishedJob, key_holder
from app_patch.schemas import JobOut, ResultIn, ResultOut

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


async def record_finished(session: AsyncSession, finished: FinishedJob) -> tuple[JobOut, bool]:
    """One statement for an analysis that already ran: the job, finished, with its result.

    What a synchronous API records (no queued/running rows for anyone to see); an idempotency
    key already used by the same request returns that job instead, untouched, and one used by
    another request raises ``IdempotencyConflictError``. Returns ``(job, created)``.
    """
    values = finished.row_values()
    result = finished.result
    if result is None:
        row = await fetch_one(session, _RECORD_FAILED, _job_params(values))
    else:
        params = _job_params(values) | _result_params(result, values["id"])
        row = await fetch_one(session, _RECORD_SUCCEEDED, params)
    if row is None:  # the key names another job (the partial unique index decided)
        return await key_holder(session, values), False
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
    inserted = await fetch_one(session, _RECORD_MANY, columns)
    assert inserted is not None
    return int(inserted[0])
