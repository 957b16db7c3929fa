"""HTTP routes the patch adds: analyses (write + history) and stored media."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated

from fastapi import (
    APIRouter,
    File,
    Form,
    Header,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    UploadFile,
)
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from app_patch.media import DEFAULT_CONTENT_TYPE, MediaNotFoundError, clean_original_name
from app_patch.models import JobStatus
from app_patch.repository import MediaSnapshot, NewJob
from app_patch.resilience import DependencyUnavailableError, OutboxEntry
from app_patch.runtime import Runtime
from app_patch.schemas import HistoryFilter, HistoryPage, JobOut, MediaOut, ResultIn, ResultOut
from app_patch.storage import StagedFile, upload_key

router = APIRouter()
SHA256_PATTERN = r"^[0-9a-f]{64}$"
RETRY_AFTER_S = "5"


class ErrorBody(BaseModel):
    detail: str | list[dict[str, object]]


ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 404, 413, 422, 503, 507)
}


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.ma_runtime
    return runtime


def unavailable(what: str) -> HTTPException:
    return HTTPException(
        status_code=503,
        detail=f"{what} is temporarily unavailable (PostgreSQL down); retry later",
        headers={"Retry-After": RETRY_AFTER_S},
    )


async def _chunks(upload: UploadFile, size: int) -> AsyncIterator[bytes]:
    while chunk := await upload.read(size):
        yield chunk


@router.post(
    "/analyses",
    status_code=201,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "Idempotency-Key seen before: the existing job"},
        202: {"model": JobOut, "description": "PostgreSQL down: kept in the durable outbox"},
        **ERRORS,
    },
    summary="Upload a file and analyse it",
)
async def create_analysis(
    request: Request,
    response: Response,
    file: Annotated[UploadFile, File(description="the media file")],
    analysis_type: Annotated[str, Form(description="auto, basic, image or audio")] = "auto",
    client_ref: Annotated[str | None, Form(max_length=255)] = None,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
    ] = None,
) -> JobOut:
    rt = runtime_of(request)
    if analysis_type not in rt.analysis_types:
        raise HTTPException(
            422,
            f"unsupported analysis_type {analysis_type!r}; allowed: {', '.join(rt.analysis_types)}",
        )
    new = NewJob(
        analysis_type=analysis_type,
        client_ref=client_ref,
        idempotency_key=idempotency_key,
        job_id=uuid.uuid4(),
    )
    chunks = _chunks(file, rt.settings.storage.chunk_bytes)
    async with rt.storage.stage(chunks) as staged:
        if staged.size_bytes == 0:
            raise HTTPException(400, "empty file: nothing to analyse")
        outcome = await _analyse(rt, analysis_type, staged)
        content_type = outcome.content_type
        try:
            media = await rt.db(
                lambda: rt.media.register_staged(
                    staged, content_type=content_type, original_name=file.filename
                )
            )
        except DependencyUnavailableError:
            # PostgreSQL is down: keep the bytes (content-addressed) and defer the history
            key = upload_key(staged.sha256)
            await rt.storage.place(staged, key)
            snapshot = MediaSnapshot(
                sha256=staged.sha256,
                size_bytes=staged.size_bytes,
                content_type=content_type,
                storage_key=key,
                original_name=clean_original_name(file.filename),
            )
            response.status_code = 202
            response.headers["X-History-Deferred"] = "outbox"
            return await _deferred(rt, new, outcome, snapshot)
    await rt.history.invalidate_media(media.sha256)
    job, created = await _persisted(rt, new, outcome, media.id)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/analyses/{job.id}"
    return job


async def _persisted(
    rt: Runtime, new: NewJob, outcome: Outcome, media_id: uuid.UUID
) -> tuple[JobOut, bool]:
    """The normal path: the finished job and its result in one transaction.

    An outage here raises DependencyUnavailableError (503): the upload is already stored and
    registered, so the client's retry (same Idempotency-Key) finds it.
    """
    return await rt.history.record_finished(
        replace(new, media_file_id=media_id),
        started_at=outcome.started_at,
        finished_at=outcome.finished_at,
        result=outcome.result,
        error=outcome.error,
    )


async def _deferred(rt: Runtime, new: NewJob, outcome: Outcome, media: MediaSnapshot) -> JobOut:
    """PostgreSQL is down: the finished job goes to the durable outbox (and the cache)."""
    assert new.job_id is not None
    job = JobOut(
        id=new.job_id,
        media_file_id=None,
        analysis_type=new.analysis_type,
        status=JobStatus.succeeded if outcome.result is not None else JobStatus.failed,
        params=new.params or {},
        client_ref=new.client_ref,
        idempotency_key=new.idempotency_key,
        created_at=outcome.started_at,
        started_at=outcome.started_at,
        finished_at=outcome.finished_at,
        error=outcome.error,
        attempts=1,
        result=None
        if outcome.result is None
        else ResultOut(**outcome.result.model_dump(), created_at=outcome.finished_at),
    )
    await asyncio.to_thread(rt.outbox.append, OutboxEntry(job, media))
    await rt.history.remember(job)
    return job


@dataclass(frozen=True)
class Outcome:
    """One analysis run: its result, or the error that fails the job, and when it ran."""

    started_at: datetime
    finished_at: datetime
    result: ResultIn | None
    error: str | None

    @property
    def content_type(self) -> str:
        """Sniffed from the bytes by the analysis; never the client's claim."""
        if self.result is None:
            return DEFAULT_CONTENT_TYPE
        return str(self.result.result.get("content_type", DEFAULT_CONTENT_TYPE))


async def _analyse(rt: Runtime, analysis_type: str, staged: StagedFile) -> Outcome:
    """Run the analysis on the staged upload (in a worker thread)."""
    started = datetime.now(UTC)
    try:
        ran = await asyncio.to_thread(
            rt.analyse, analysis_type, staged.path, staged.sha256, staged.size_bytes
        )
    except rt.analysis_errors as exc:
        return Outcome(started, datetime.now(UTC), None, str(exc))
    result = ResultIn(
        result=ran.result,
        summary=ran.summary,
        engine_name=ran.engine_name,
        engine_version=ran.engine_version,
        duration_ms=ran.duration_ms,
    )
    return Outcome(started, datetime.now(UTC), result, None)


@router.get(
    "/analyses/{job_id}",
    response_model=JobOut,
    responses=ERRORS,
    summary="One analysis job with its result",
)
async def get_analysis(request: Request, job_id: uuid.UUID) -> JobOut:
    rt = runtime_of(request)
    try:
        job = await rt.history.get_job(job_id)
    except DependencyUnavailableError:
        entry = await asyncio.to_thread(rt.outbox.get, job_id)
        if entry is None:
            raise unavailable("the analysis history") from None
        return entry.job
    if job is None:
        entry = await asyncio.to_thread(rt.outbox.get, job_id)
        if entry is not None:  # accepted while PG was down, not replayed yet
            return entry.job
        raise HTTPException(404, f"no analysis job {job_id}")
    return job


@router.get(
    "/analyses",
    response_model=HistoryPage,
    responses=ERRORS,
    summary="Analysis history, newest first (keyset pagination)",
)
async def list_analyses(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    status: JobStatus | None = None,
    analysis_type: Annotated[str | None, Query(max_length=64)] = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
) -> HistoryPage:
    rt = runtime_of(request)
    limit = min(limit, rt.settings.api.history_page_max)
    filters = HistoryFilter(
        status=status,
        analysis_type=analysis_type,
        created_from=_aware(created_from),
        created_to=_aware(created_to),
    )
    try:
        return await rt.history.list_history(limit=limit, cursor=cursor, filters=filters)
    except DependencyUnavailableError:
        raise unavailable("the analysis history") from None


def _aware(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


Sha256 = Annotated[str, Path(pattern=SHA256_PATTERN, description="64 lowercase hex digits")]


async def _media_or_404(rt: Runtime, sha256: str) -> MediaOut:
    try:
        media = await rt.history.get_media(sha256)
    except DependencyUnavailableError:
        raise unavailable("media metadata") from None
    if media is None:
        raise HTTPException(404, f"no stored media with sha256 {sha256}")
    return media


@router.get(
    "/media/{sha256}",
    response_model=MediaOut,
    responses=ERRORS,
    summary="Metadata of a stored media file",
)
async def get_media(request: Request, sha256: Sha256) -> MediaOut:
    return await _media_or_404(runtime_of(request), sha256)


@router.get(
    "/media/{sha256}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **ERRORS},
    summary="The stored bytes of a media file",
)
async def get_media_content(request: Request, sha256: Sha256) -> StreamingResponse:
    rt = runtime_of(request)
    try:
        opened = await rt.db(lambda: rt.media.open_media(sha256))  # records the access
    except MediaNotFoundError:
        raise HTTPException(404, f"no stored media with sha256 {sha256}") from None
    except DependencyUnavailableError:
        raise unavailable("media content") from None
    return StreamingResponse(
        opened.chunks(),
        media_type=opened.content_type,
        headers={"Content-Length": str(opened.size_bytes)},
    )
