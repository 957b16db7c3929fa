"""Plain read/write shapes shared by the repository, the cache and the HTTP layer.

They are pydantic models so the same objects are JSON-cached and returned by FastAPI.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app_patch.models import JobStatus


class ResultIn(BaseModel):
    """What an analysis engine produced for one job."""

    result: dict[str, Any]
    summary: str | None = None
    engine_name: str
    engine_version: str
    duration_ms: float = Field(ge=0)


class ResultOut(ResultIn):
    model_config = ConfigDict(from_attributes=True)

    created_at: datetime


class JobOut(BaseModel):
    """One analysis job as the history shows it, with its result once finished."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    media_file_id: uuid.UUID | None
    analysis_type: str
    status: JobStatus
    params: dict[str, Any]
    client_ref: str | None
    idempotency_key: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    attempts: int
    result: ResultOut | None = None


class HistoryFilter(BaseModel):
    status: JobStatus | None = None
    analysis_type: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None


class HistoryPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(
        description="pass as `cursor` to get the next page; null on the last page"
    )


class MediaOut(BaseModel):
    """One live stored media file, looked up by its content hash."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    sha256: str
    size_bytes: int
    content_type: str
    original_name: str | None
    storage_key: str
    created_at: datetime
    last_accessed_at: datetime


class InvalidCursorError(ValueError):
    """A history cursor that we did not issue (or that was altered)."""


def encode_cursor(created_at: datetime, job_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_raw, id_raw = base64.urlsafe_b64decode(padded).decode().split("|")
        created_at = datetime.fromisoformat(created_raw)
        job_id = uuid.UUID(id_raw)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursorError("malformed history cursor") from exc
    if created_at.tzinfo is None:
        raise InvalidCursorError("malformed history cursor")
    return created_at, job_id
