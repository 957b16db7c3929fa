"""HTTP routes the patch adds: analyses (write + history) and stored media."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from app_patch import ingest, upload_gate
from app_patch.breaker import DependencyUnavailableError
from app_patch.deps import RuntimeDep
from app_patch.media import MediaNotFoundError, OpenedFile
from app_patch.models import JobStatus
from app_patch.repository import IdempotencyConflictError
from app_patch.runtime import Runtime
from app_patch.schemas import HistoryFilter, HistoryPage, JobOut, MediaOut
from app_patch.submission import EmptyUploadError, Outcome

router = APIRouter()
SHA256_PATTERN = r"^[0-9a-f]{64}$"
RETRY_AFTER_S = upload_gate.RETRY_AFTER_S


class ErrorBody(BaseModel):
    detail: str | list[dict[str, object]]


ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 404, 413, 422, 503, 507)
}


def unavailable(what: str) -> HTTPException:
    return HTTPException(
        status_code=503,
        detail=f"{what} is temporarily unavailable (PostgreSQL down); retry later",
        headers={"Retry-After": RETRY_AFTER_S},
    )


OUTCOME_STATUS = {Outcome.created: 201, Outcome.existing: 200, Outcome.deferred: 202}


PRINTABLE_PATTERN = r"^[^\x00-\x1f\x7f]*$"
PRINTABLE_HINT = "no control characters (no stored analysis type has one)"


@router.post(
    "/analyses",
    status_code=201,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "Idempotency-Key seen before: the existing job"},
        202: {"model": JobOut, "description": "PostgreSQL down: kept in the durable outbox"},
        409: {"model": ErrorBody, "description": "Idempotency-Key used for another request"},
        **ERRORS,
    },
    summary="Upload a file and analyse it",
    openapi_extra=ingest.openapi_upload_body(),
)
async def create_analysis(
    request: Request,
    response: Response,
    rt: RuntimeDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
    ] = None,
) -> JobOut:
    """The multipart body is parsed here as it streams (``app_patch.ingest``), never spooled:
    the form is declared in ``openapi_extra`` for the schema, and FastAPI reads no body."""
    try:
        form = ingest.StreamedForm(request.headers.get("content-type", ""), rt.analysis_types)
        await ingest.ensure_free_space(
            rt.storage,
            rt.settings.storage.min_free_bytes,
            ingest.declared_length(request.headers.get("content-length")),
        )
        async with aclosing(form.file_chunks(request.stream())) as chunks:
            submitted = await rt.submissions.submit_streamed(
                chunks, lambda: form.submission(idempotency_key)
            )
    except ingest.UploadRefusedError as exc:
        raise HTTPException(exc.status, exc.detail) from None
    except ClientDisconnect:  # nobody reads the answer; the staged file is already gone
        raise HTTPException(400, "the client went away before the upload ended") from None
    except EmptyUploadError as exc:
        raise HTTPException(400, str(exc)) from None
    except IdempotencyConflictError as exc:
        raise HTTPException(409, str(exc)) from None
    response.status_code = OUTCOME_STATUS[submitted.outcome]
    if submitted.outcome is Outcome.deferred:
        response.headers["X-History-Deferred"] = "outbox"
    else:
        response.headers["Location"] = f"/analyses/{submitted.job.id}"
    return submitted.job


@router.get(
    "/analyses/{job_id}",
    response_model=JobOut,
    responses=ERRORS,
    summary="One analysis job with its result",
)
async def get_analysis(rt: RuntimeDep, job_id: uuid.UUID) -> JobOut:
    try:
        job = await rt.history.get_job(job_id)
    except DependencyUnavailableError:
        entry = await asyncio.to_thread(rt.outbox.get, job_id)
        if entry is None:
            raise unavailable("the analysis history") from None
        return entry.answer()
    if job is not None:
        return job
    entry = await asyncio.to_thread(rt.outbox.get, job_id)
    if entry is not None:  # accepted while PG was down, not replayed yet
        return entry.answer()
    merged_into = await asyncio.to_thread(rt.outbox.merged_into, job_id)
    if merged_into is not None:  # replayed into the earlier job of the same Idempotency-Key
        job = await rt.history.get_job(merged_into)
        if job is not None:
            return job
    raise HTTPException(404, "no such analysis job")


@router.get(
    "/analyses",
    response_model=HistoryPage,
    responses=ERRORS,
    summary="Analysis history, newest first (keyset pagination)",
)
async def list_analyses(
    rt: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    status: JobStatus | None = None,
    analysis_type: Annotated[
        str | None, Query(max_length=64, pattern=PRINTABLE_PATTERN, description=PRINTABLE_HINT)
    ] = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
) -> HistoryPage:
    limit = min(limit, rt.settings.api.history_page_max)
    filters = HistoryFilter(
        status=status,
        analysis_type=analysis_type,
        created_from=_aware(created_from),
        created_to=_aware(created_to),
    )
    try:
        page = await rt.history.list_history(limit=limit, cursor=cursor, filters=filters)
    except DependencyUnavailableError:
        raise unavailable("the analysis history") from None
    # a listing shows every client's jobs: their Idempotency-Keys are theirs alone
    hidden = [job.model_copy(update={"idempotency_key": None}) for job in page.items]
    return page.model_copy(update={"items": hidden})


def _aware(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


Sha256 = Annotated[str, Path(pattern=SHA256_PATTERN, description="64 lowercase hex digits")]


async def _media_or_404(rt: Runtime, sha256: str) -> MediaOut:
    try:
        media = await rt.media_lookup.get(sha256)
    except DependencyUnavailableError:
        raise unavailable("media metadata") from None
    if media is None:
        raise HTTPException(404, "no stored media with that sha256")
    return media


@router.get(
    "/media/{sha256}",
    response_model=MediaOut,
    responses=ERRORS,
    summary="Metadata of a stored media file",
)
async def get_media(rt: RuntimeDep, sha256: Sha256) -> MediaOut:
    return await _media_or_404(rt, sha256)


@router.get(
    "/media/{sha256}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **ERRORS},
    summary="The stored bytes of a media file",
)
async def get_media_content(rt: RuntimeDep, sha256: Sha256) -> StreamingResponse:
    try:
        opened = await rt.db(lambda: rt.media.open_media(sha256))  # records the access
    except MediaNotFoundError:
        raise HTTPException(404, "no stored media with that sha256") from None
    except DependencyUnavailableError:
        raise unavailable("media content") from None
    return OpenedFileResponse(opened)


class OpenedFileResponse(StreamingResponse):
    """Streams an ``OpenedFile`` and closes it whatever happens (client gone included)."""

    def __init__(self, opened: OpenedFile) -> None:
        super().__init__(
            opened.chunks(),
            media_type=opened.content_type,
            headers={
                "Content-Length": str(opened.size_bytes),
                # uploaded bytes are never rendered by a browser as ours
                "X-Content-Type-Options": "nosniff",
                "Content-Disposition": f'attachment; filename="{opened.sha256}"',
                "Content-Security-Policy": "sandbox",
            },
        )
        self.opened = opened

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.opened.close()
