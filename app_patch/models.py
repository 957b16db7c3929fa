"""The five tables of the analysis history (SQLAlchemy 2 typed models).

Indexes follow the queries in repository/ and retention/queries.py; names come from the
naming convention so that Alembic autogenerate stays stable.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSONB,
        uuid.UUID: UUID(as_uuid=True),
    }


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed)


def _now_default() -> Any:
    return func.now()


def _live_index(table: str, column: str) -> Index:
    """``ix_<table>_<column>_live``: ``column`` over the rows retention has not deleted yet."""
    return Index(f"ix_{table}_{column}_live", column, postgresql_where=text("deleted_at IS NULL"))


class MediaFile(Base):
    """One row per distinct uploaded file (content-addressed by sha256)."""

    __tablename__ = "media_files"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(255))
    original_name: Mapped[str | None] = mapped_column(String(1024))
    storage_key: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(server_default=_now_default())
    last_accessed_at: Mapped[datetime] = mapped_column(server_default=_now_default())
    expires_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]

    __table_args__ = (
        _live_index(__tablename__, "expires_at"),
        _live_index(__tablename__, "last_accessed_at"),
    )


class AnalysisJob(Base):
    """The history: one row per requested analysis."""

    __tablename__ = "analysis_jobs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    media_file_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("media_files.id", ondelete="SET NULL"), index=True
    )
    analysis_type: Mapped[str] = mapped_column(String(64))
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, name="job_status", values_callable=lambda e: [m.value for m in e]),
        default=JobStatus.queued,
    )
    params: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    client_ref: Mapped[str | None] = mapped_column(String(255))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # sha256 of what the request asked (type, file, parameters): a key reused for another
    # request is a conflict (409), not a silent replay of the first answer
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(server_default=_now_default())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))

    media_file: Mapped[MediaFile | None] = relationship(lazy="raise")
    result: Mapped[AnalysisResult | None] = relationship(
        back_populates="job", lazy="raise", uselist=False, passive_deletes=True
    )

    __table_args__ = (
        Index("ix_analysis_jobs_created_at_id", text("created_at DESC"), text("id DESC")),
        Index("ix_analysis_jobs_status_created_at", "status", text("created_at DESC")),
        Index(
            "uq_analysis_jobs_idempotency_key",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )


class AnalysisResult(Base):
    """Exactly one per finished job."""

    __tablename__ = "analysis_results"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("analysis_jobs.id", ondelete="CASCADE"), unique=True
    )
    result: Mapped[dict[str, Any]]
    summary: Mapped[str | None] = mapped_column(Text)
    engine_name: Mapped[str] = mapped_column(String(64))
    engine_version: Mapped[str] = mapped_column(String(64))
    duration_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(server_default=_now_default())

    job: Mapped[AnalysisJob] = relationship(back_populates="result", lazy="raise")


class Artifact(Base):
    """A file derived by a job (thumbnail, transcript, report, ...)."""

    __tablename__ = "artifacts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("analysis_jobs.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(1024), unique=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(server_default=_now_default())
    expires_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]

    __table_args__ = (_live_index(__tablename__, "expires_at"),)


class RetentionEvent(Base):
    """Audit row for every deletion retention makes."""

    __tablename__ = "retention_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(255))
    storage_key: Mapped[str | None] = mapped_column(String(1024))
    bytes_freed: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    policy: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(server_default=_now_default())

    __table_args__ = (
        Index("ix_retention_events_occurred_at", "occurred_at"),
        Index("ix_retention_events_object_type_object_id", "object_type", "object_id"),
    )


class StoreIdentity(Base):
    """The one storage root this database's rows point into (a single row).

    The root holds the same id in a marker file; reconciling retention refuses a root whose
    marker differs, so a wrong ``MA_STORAGE_ROOT`` can never make live files look missing.
    """

    __tablename__ = "store_identity"

    singleton: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    store_id: Mapped[uuid.UUID]
    recorded_at: Mapped[datetime] = mapped_column(server_default=_now_default())

    __table_args__ = (CheckConstraint("singleton", name="singleton"),)


ALL_TABLES = tuple(Base.metadata.sorted_tables)
