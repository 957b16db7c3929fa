"""The upload use case: analyse, register the file, record the finished job, or defer it.

``AnalysisService.submit`` owns both paths. Normal: the bytes are staged (hashed on the way),
an Idempotency-Key already seen answers the job it names (409 for another request), the
analysis runs, the file and its ``media_files`` row are committed together, then the finished
job and its result in one transaction. Outage: any database failure once the analysis ran
(PostgreSQL killed mid-commit included) keeps the file under its content-addressed key and
writes the ``FinishedJob`` to the durable outbox, answered 202; a key is bound to that deferred
job in the outbox's index, so a repeat during the outage answers the same job.

The routes only parse input and map ``Submitted.outcome`` and the errors to status codes.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import uuid
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from sqlalchemy.exc import SQLAlchemyError

from app_patch.breaker import DependencyUnavailableError
from app_patch.guarded_sessions import DatabaseGuard
from app_patch.media import DEFAULT_CONTENT_TYPE, MediaStore, clean_original_name
from app_patch.media_lookup import MediaLookup
from app_patch.outbox import Outbox, OutboxEntry
from app_patch.repository import (
    FinishedJob,
    IdempotencyConflictError,
    MediaSnapshot,
    NewJob,
    same_request,
)
from app_patch.schemas import JobOut, ResultIn
from app_patch.service import HistoryService
from app_patch.storage import (
    StagedFile,
    Storage,
    StorageUnavailableError,
    upload_key,
)
from app_patch.threads import in_thread

log = logging.getLogger(__name__)


class EmptyUploadError(ValueError):
    """Nothing to analyse (HTTP 400)."""


class Outcome(enum.StrEnum):
    created = "created"  # 201: a new job in the history
    existing = "existing"  # 200: the Idempotency-Key names this job already
    deferred = "deferred"  # 202: PostgreSQL is down; the job waits in the outbox


@dataclass(frozen=True)
class Submitted:
    job: JobOut
    outcome: Outcome


@dataclass(frozen=True)
class Submission:
    """What one request asks for (already validated by the HTTP layer)."""

    analysis_type: str
    client_ref: str | None = None
    idempotency_key: str | None = None
    original_name: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self, sha256: str) -> str:
        """Identifies the request behind an Idempotency-Key: same file, type and fields."""
        body = orjson.dumps(
            [self.analysis_type, sha256, self.client_ref, self.params],
            option=orjson.OPT_SORT_KEYS,
        )
        return hashlib.sha256(body).hexdigest()


class Analysis(Protocol):
    """What an analyser returns (see api/analysis.py); read-only, so frozen dataclasses fit."""

    @property
    def result(self) -> dict[str, Any]: ...
    @property
    def summary(self) -> str: ...
    @property
    def duration_ms(self) -> float: ...
    @property
    def engine_name(self) -> str: ...
    @property
    def engine_version(self) -> str: ...


class Analyser(Protocol):
    """Blocking analysis of a stored file; raises an exception whose text is the job error."""

    def __call__(self, analysis_type: str, path: Any, sha256: str, size_bytes: int) -> Analysis: ...


@dataclass
class AnalysisService:
    """Runs uploads end to end; one instance per app (see ``runtime.open_runtime``)."""

    storage: Storage
    media: MediaStore
    history: HistoryService
    media_lookup: MediaLookup
    outbox: Outbox
    guard: DatabaseGuard
    analyse: Analyser
    analysis_errors: tuple[type[Exception], ...]

    async def submit(self, request: Submission, chunks: AsyncIterable[bytes]) -> Submitted:
        """Raises ``EmptyUploadError`` (400), ``IdempotencyConflictError`` (409),
        ``UploadTooLargeError`` (413), ``StorageUnavailableError`` (507) and
        ``StoreMismatchError`` (507); never a database error."""
        return await self.submit_streamed(chunks, lambda: request)

    async def submit_streamed(
        self, chunks: AsyncIterable[bytes], describe: Callable[[], Submission]
    ) -> Submitted:
        """``submit`` for a body whose fields may follow the file (a streamed multipart form):
        ``describe`` builds the request once every chunk is staged; what it raises propagates,
        and the staged file is removed as it does."""
        async with self.storage.stage(chunks) as staged:
            request = describe()
            if staged.size_bytes == 0:
                raise EmptyUploadError("empty file: nothing to analyse")
            fingerprint = request.fingerprint(staged.sha256)
            key = request.idempotency_key
            if key is not None:
                seen = await self._seen(key, fingerprint)
                if seen is not None:
                    return seen
            finished = await self._run_analysis(request, staged, fingerprint)
            return await self._record(request, staged, finished)

    # ---- steps

    async def _seen(self, key: str, fingerprint: str) -> Submitted | None:
        """The job a repeated key names: deferred (outbox) first, then the history."""
        claim = await in_thread(self.outbox.key_claim, key)
        if claim is not None:
            entry = await in_thread(self.outbox.get, claim.job_id)
            if entry is not None:
                if not same_request(claim.fingerprint, fingerprint):
                    raise IdempotencyConflictError.reused()
                return Submitted(entry.answer(), Outcome.deferred)
        try:
            held = await self.history.job_by_key(key)
        except (DependencyUnavailableError, SQLAlchemyError):
            return None  # checked again when the job is recorded or deferred
        if held is None:
            return None
        job, held_fingerprint = held
        if not same_request(held_fingerprint, fingerprint):
            raise IdempotencyConflictError.reused()
        return Submitted(job, Outcome.existing)

    async def _run_analysis(
        self, request: Submission, staged: StagedFile, fingerprint: str
    ) -> FinishedJob:
        """The analysis in a worker thread; a failure of the analyser fails the job."""
        new = NewJob(
            analysis_type=request.analysis_type,
            params=request.params,
            client_ref=request.client_ref,
            idempotency_key=request.idempotency_key,
            job_id=uuid.uuid4(),
            request_fingerprint=fingerprint,
        )
        started = datetime.now(UTC)
        try:
            ran = await asyncio.to_thread(
                self.analyse, request.analysis_type, staged.path, staged.sha256, staged.size_bytes
            )
        except self.analysis_errors as exc:
            return FinishedJob(new, started, datetime.now(UTC), None, str(exc) or "analysis failed")
        result = ResultIn(
            result=ran.result,
            summary=ran.summary,
            engine_name=ran.engine_name,
            engine_version=ran.engine_version,
            duration_ms=ran.duration_ms,
        )
        return FinishedJob(new, started, datetime.now(UTC), result)

    async def _record(
        self, request: Submission, staged: StagedFile, finished: FinishedJob
    ) -> Submitted:
        content_type = _content_type(finished)
        snapshot = MediaSnapshot(
            sha256=staged.sha256,
            size_bytes=staged.size_bytes,
            content_type=content_type,
            storage_key=upload_key(staged.sha256),
            original_name=clean_original_name(request.original_name),
        )
        try:
            stored = await self.guard(
                lambda: self.media.register_staged(
                    staged, content_type=content_type, original_name=request.original_name
                )
            )
        except (DependencyUnavailableError, SQLAlchemyError) as exc:
            _log_deferral("registering the file", exc)
            if not staged.placed:  # the commit may have failed after the file was placed
                await self.storage.place(staged, snapshot.storage_key)
            return await self._defer(finished, snapshot)
        await self.media_lookup.invalidate(stored.sha256)
        with_media = replace(finished, new=replace(finished.new, media_file_id=stored.id))
        try:
            job, created = await self.history.record_finished(with_media)
        except IdempotencyConflictError:
            raise
        except (DependencyUnavailableError, SQLAlchemyError) as exc:
            _log_deferral("recording the job", exc)
            return await self._defer(finished, snapshot)
        return Submitted(job, Outcome.created if created else Outcome.existing)

    async def _defer(self, finished: FinishedJob, snapshot: MediaSnapshot) -> Submitted:
        """Into the outbox (fsync'd), then the key's claim, then the cache.

        The entry is written before the key is claimed, so a claim always has its entry; a
        request that loses the claim race withdraws its entry and answers the winner's job
        (should the replayer have taken the loser's entry meanwhile, replay merges the two).
        An unwritable outbox is a 507, never a 500.
        """
        entry = OutboxEntry(finished, snapshot)
        key = finished.new.idempotency_key
        try:
            await in_thread(self.outbox.append, entry)
            if key is not None:
                fingerprint = finished.new.request_fingerprint
                claim = await in_thread(self.outbox.claim_key, key, entry.job_id, fingerprint)
                if claim is not None:  # a concurrent request with this key was deferred first
                    await in_thread(self.outbox.withdraw, entry.job_id)
                    if not same_request(claim.fingerprint, fingerprint):
                        raise IdempotencyConflictError.reused()
                    other = await in_thread(self.outbox.get, claim.job_id)
                    if other is not None:
                        return Submitted(other.answer(), Outcome.deferred)
                    raise StorageUnavailableError("storage unavailable: outbox entry unreadable")
        except OSError as exc:
            await in_thread(self.outbox.withdraw, entry.job_id)
            raise StorageUnavailableError.from_os(exc, "write the outbox") from exc
        job = entry.answer()
        await self.history.remember(job)
        return Submitted(job, Outcome.deferred)


def _content_type(finished: FinishedJob) -> str:
    """Sniffed from the bytes by the analysis; never the client's claim."""
    if finished.result is None:
        return DEFAULT_CONTENT_TYPE
    return str(finished.result.result.get("content_type", DEFAULT_CONTENT_TYPE))


def _log_deferral(step: str, exc: BaseException) -> None:
    cause = exc.__cause__ or exc
    log.warning("PostgreSQL failed while %s (%s): deferring to the outbox", step,
                type(cause).__name__)  # fmt: skip
