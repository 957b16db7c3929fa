"""The API without the persistence kit: the limit of ``bench.persistence_cost``.

``uvicorn bench.bare_api:app`` serves the same two routes as ``api.main:app`` with the same
framework (FastAPI), the same streamed multipart parsing (``app_patch.ingest.StreamedForm``)
and the same analysis (``api.analysis.run_analysis``, what ``api.main.analyse`` calls, in a
worker thread), but nothing the kit adds: no PostgreSQL, no Redis, no content-addressed
store, no outbox, no middleware. The file part is
written to a temp file (hashed on the way, 1 MiB writes in a worker thread, as the store
does, but no fsync and no lock), analysed, then deleted; the job is kept in a dict and
``GET /analyses/{id}`` answers it from there. Both answer the kit's ``JobOut`` JSON.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request

from api.analysis import ANALYSIS_TYPES, AnalysisError, FileFacts, run_analysis
from app_patch import ingest
from app_patch.models import JobStatus
from app_patch.schemas import JobOut, ResultOut

TMP_DIR_ENV = "MA_BENCH_BARE_TMP"  # set by bench.persistence_cost
WRITE_BYTES = 1024 * 1024  # the store's default chunk_bytes

app = FastAPI(title="media-analysis-api without the persistence kit")
jobs: dict[uuid.UUID, JobOut] = {}


@dataclass
class Spooled:
    path: Path
    sha256: str
    size_bytes: int


def _write(fd: int, data: bytes | bytearray, hasher: hashlib._Hash) -> None:
    hasher.update(data)
    view = memoryview(data)
    for _ in range(len(view) + 1):  # os.write writes >= 1 byte per call or raises
        if not view:
            return
        view = view[os.write(fd, view) :]
    raise OSError("write made no progress")


async def spool(chunks: AsyncIterator[bytes]) -> Spooled:
    """The file part into a new temp file (removed by the caller), hashed as it streams."""
    fd, name = await asyncio.to_thread(
        tempfile.mkstemp, prefix="bare-", dir=os.environ.get(TMP_DIR_ENV) or None
    )
    hasher = hashlib.sha256()
    total = 0
    buffer = bytearray()
    try:
        async for chunk in chunks:
            total += len(chunk)
            buffer += chunk
            if len(buffer) >= WRITE_BYTES:
                data, buffer = buffer, bytearray()
                await asyncio.to_thread(_write, fd, data, hasher)
        if buffer:
            await asyncio.to_thread(_write, fd, buffer, hasher)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    os.close(fd)
    return Spooled(Path(name), hasher.hexdigest(), total)


@app.post("/analyses", status_code=201, response_model=JobOut)
async def create_analysis(request: Request) -> JobOut:
    try:
        form = ingest.StreamedForm(request.headers.get("content-type", ""), ANALYSIS_TYPES)
        async with aclosing(form.file_chunks(request.stream())) as chunks:
            spooled = await spool(chunks)
    except ingest.UploadRefusedError as exc:
        raise HTTPException(exc.status, exc.detail) from None
    try:
        submission = form.submission(None)
        if spooled.size_bytes == 0:
            raise HTTPException(400, "empty file: nothing to analyse")
        started = datetime.now(UTC)
        try:
            facts = FileFacts(spooled.path, spooled.sha256, spooled.size_bytes)
            ran = await asyncio.to_thread(run_analysis, submission.analysis_type, facts)
        except AnalysisError as exc:
            error: str | None = str(exc) or "analysis failed"
            result = None
        else:
            error = None
            result = ResultOut(
                result=ran.result,
                summary=ran.summary,
                engine_name=ran.engine_name,
                engine_version=ran.engine_version,
                duration_ms=ran.duration_ms,
                created_at=datetime.now(UTC),
            )
    except ingest.UploadRefusedError as exc:
        raise HTTPException(exc.status, exc.detail) from None
    finally:
        await asyncio.to_thread(spooled.path.unlink, missing_ok=True)
    job = JobOut(
        id=uuid.uuid4(),
        media_file_id=uuid.uuid4(),
        analysis_type=submission.analysis_type,
        status=JobStatus.failed if error else JobStatus.succeeded,
        params={},
        client_ref=submission.client_ref,
        idempotency_key=None,
        created_at=started,
        started_at=started,
        finished_at=datetime.now(UTC),
        error=error,
        attempts=1,
        result=result,
    )
    jobs[job.id] = job
    return job


@app.get("/analyses/{job_id}", response_model=JobOut)
async def get_analysis(job_id: uuid.UUID) -> JobOut:
    job = jobs.get(job_id)
    if job is None:
        raise HTTPException(404, "no such analysis job")
    return job


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
