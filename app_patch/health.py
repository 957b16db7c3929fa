"""Liveness, readiness (per dependency) and the Prometheus scrape endpoint."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field
from sqlalchemy import text

from app_patch.deps import RuntimeDep
from app_patch.runtime import Runtime
from app_patch.storage import StorageError

router = APIRouter(tags=["health"])
DependencyState = Literal["ok", "degraded", "down"]
PROBE_TIMEOUT_S = 2.0


def _instance_id() -> str:
    """Random per process; ``MA_API_INSTANCE_ID`` (32 hex digits) when the process that
    spawned this one chose it (``infra.engines.local_api``), so it can tell its API from another."""
    given = os.environ.get("MA_API_INSTANCE_ID", "").strip()
    return given if re.fullmatch(r"[0-9a-f]{32}", given) else uuid.uuid4().hex


INSTANCE_ID = _instance_id()
BUILD = os.environ.get("MA_API_BUILD", "").strip()[:64] or "dev"
"""The image's build stamp (``BUILD_STAMP`` build argument of the API image): which version
answers, e.g. during ``invoke deploy``."""


class Live(BaseModel):
    status: Literal["ok"] = "ok"
    instance: str = Field(default=INSTANCE_ID, description="this process's id (random per process)")
    build: str = Field(default=BUILD, description="the build stamp of the image serving")


class AreaFigures(BaseModel):
    files: int
    bytes: int


class Ready(BaseModel):
    status: DependencyState
    checks: dict[str, DependencyState]
    outbox_backlog: int
    outbox_failed: int = Field(description="entries set aside (invoke outbox lists them)")
    storage_usage: dict[str, AreaFigures]


async def postgres_state(rt: Runtime) -> DependencyState:
    if rt.db_breaker.state == "open":
        return "down"

    async def probe() -> None:
        async with rt.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(rt.db(probe), PROBE_TIMEOUT_S)
    except Exception:
        return "down"
    return "ok" if rt.db_breaker.state == "closed" else "degraded"


async def redis_state(rt: Runtime) -> DependencyState:
    """Ping first: the ping goes through the cache's breaker, so readiness polls alone let an
    open breaker half-open and close again once Redis is back."""
    if rt.cache.enabled:
        await rt.cache.ping()
    return rt.cache.state


async def storage_state(rt: Runtime) -> DependencyState:
    if rt.media.identity_problem is not None:
        return "down"  # not this database's store: uploads are refused (507)
    try:
        await asyncio.wait_for(rt.storage.check_writable(), PROBE_TIMEOUT_S)
    except (StorageError, TimeoutError):
        return "down"
    return "ok"


@router.get("/health/live", response_model=Live, summary="The process is up")
async def live() -> Live:
    return Live()


async def readiness(rt: Runtime) -> tuple[DependencyState, dict[str, DependencyState], int]:
    """The overall state, each check's and the failed outbox entries (for /health/ready and,
    as gauges, /metrics)."""
    pg, cache, store = await asyncio.gather(postgres_state(rt), redis_state(rt), storage_state(rt))
    failed = await asyncio.to_thread(rt.outbox.failed_count)
    checks: dict[str, DependencyState] = {
        "postgres": pg,
        "redis": cache,
        "storage": store,
        "outbox": "degraded" if failed else "ok",  # poison entries wait for an operator
    }
    if store == "down":
        overall: DependencyState = "down"  # uploads cannot be stored: nothing to serve
    elif all(state == "ok" for state in checks.values()):
        overall = "ok"
    else:
        overall = "degraded"  # PG down -> outbox; Redis down -> no cache: still serving
    return overall, checks, failed


@router.get(
    "/health/ready",
    response_model=Ready,
    responses={503: {"model": Ready, "description": "cannot serve analyses"}},
    summary="Each dependency's state; 200 while analyses can still be served",
)
async def ready(rt: RuntimeDep, response: Response) -> Ready:
    overall, checks, failed = await readiness(rt)
    response.status_code = 503 if overall == "down" else 200
    usage = await rt.storage.usage_async(max_age_s=5)
    return Ready(
        status=overall,
        checks=checks,
        outbox_backlog=await asyncio.to_thread(rt.outbox.backlog),
        outbox_failed=failed,
        storage_usage={a: AreaFigures(files=n, bytes=b) for a, (n, b) in usage.items()},
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
    summary="Prometheus metrics",
)
async def metrics(rt: RuntimeDep) -> Response:
    await rt.refresh_retention_totals()
    overall, checks, _ = await readiness(rt)
    rt.metrics.observe_readiness(overall, checks)
    body = await asyncio.to_thread(rt.metrics.render, rt.storage.root)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
