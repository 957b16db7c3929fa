"""An outbox entry: a finished job answered while PostgreSQL was down, and its file format."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import datetime

import orjson
from pydantic import ValidationError

from app_patch.repository import FinishedJob, MediaSnapshot, NewJob
from app_patch.schemas import JobOut, ResultIn

_ERROR_CHARS = 500


class OutboxEntryError(ValueError):
    """An entry file that cannot be read back (truncated, corrupt, unknown version)."""


@dataclass(frozen=True)
class OutboxEntry:
    """A finished job the API answered while PostgreSQL was down, and the file it needs."""

    job: FinishedJob
    media: MediaSnapshot | None

    @property
    def job_id(self) -> uuid.UUID:
        assert self.job.new.job_id is not None
        return self.job.new.job_id

    def answer(self) -> JobOut:
        """The job as the API answered it (and answers it until the replay lands)."""
        return self.job.as_job()

    def to_json(self) -> bytes:
        new, job = self.job.new, self.job
        return orjson.dumps(
            {
                "version": 2,
                "job": {
                    "id": str(new.job_id),
                    "analysis_type": new.analysis_type,
                    "params": new.params,
                    "client_ref": new.client_ref,
                    "idempotency_key": new.idempotency_key,
                    "request_fingerprint": new.request_fingerprint,
                    "started_at": job.started_at.isoformat(),
                    "finished_at": job.finished_at.isoformat(),
                    "result": None if job.result is None else job.result.model_dump(mode="json"),
                    "error": job.error,
                },
                "media": None if self.media is None else asdict(self.media),
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> OutboxEntry:
        try:
            data = orjson.loads(raw)
            media = data.get("media")
            snapshot = MediaSnapshot(**media) if media else None
            if data.get("version") == 1:  # written before 0.2: a whole JobOut
                return cls(_finished_from_v1(JobOut.model_validate(data["job"])), snapshot)
            if data.get("version") != 2:
                raise OutboxEntryError(f"unknown outbox entry version {data.get('version')!r}")
            job = data["job"]
            new = NewJob(
                analysis_type=job["analysis_type"],
                params=job["params"],
                client_ref=job["client_ref"],
                idempotency_key=job["idempotency_key"],
                job_id=uuid.UUID(job["id"]),
                request_fingerprint=job["request_fingerprint"],
            )
            result = None if job["result"] is None else ResultIn.model_validate(job["result"])
            finished = FinishedJob(
                new,
                datetime.fromisoformat(job["started_at"]),
                datetime.fromisoformat(job["finished_at"]),
                result,
                job["error"],
            )
            return cls(finished, snapshot)
        except OutboxEntryError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as exc:
            raise OutboxEntryError(f"unreadable outbox entry: {one_line(exc)}") from None


def _finished_from_v1(job: JobOut) -> FinishedJob:
    new = NewJob(
        analysis_type=job.analysis_type,
        params=job.params,
        client_ref=job.client_ref,
        idempotency_key=job.idempotency_key,
        job_id=job.id,
    )
    result = None
    if job.result is not None:
        result = ResultIn.model_validate(job.result.model_dump(exclude={"created_at"}))
    started = job.started_at or job.created_at
    return FinishedJob(new, started, job.finished_at or started, result, job.error)


def one_line(error: object) -> str:
    """An error as recorded with an entry: one line, at most ``_ERROR_CHARS`` characters."""
    return " ".join(str(error).split())[:_ERROR_CHARS]
