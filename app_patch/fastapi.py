"""``install(app)``: patch persistence, caching, storage and degradation into a FastAPI app."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from app_patch import health, routes
from app_patch.logs import configure_logging
from app_patch.metrics import Metrics
from app_patch.resilience import DependencyUnavailableError
from app_patch.runtime import Analyser, close_runtime, open_runtime
from app_patch.schemas import InvalidCursorError
from app_patch.settings import Settings, get_settings
from app_patch.storage import StorageKeyError, StorageUnavailableError, UploadTooLargeError

log = structlog.get_logger(__name__)
REQUEST_ID_HEADER = "X-Request-ID"
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def install(
    app: FastAPI,
    *,
    analyse: Analyser,
    analysis_types: Sequence[str],
    analysis_errors: tuple[type[Exception], ...] = (Exception,),
    settings: Settings | None = None,
) -> None:
    """Add the lifespan, routes, error mapping and request middleware to ``app``."""
    settings = settings or get_settings()
    metrics = Metrics()
    inner_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[None]:
        configure_logging(json=settings.api.log_json, level=settings.api.log_level)
        runtime = await open_runtime(
            settings,
            analyse=analyse,
            analysis_types=analysis_types,
            analysis_errors=analysis_errors,
            metrics=metrics,
        )
        application.state.ma_runtime = runtime
        log.info(
            "persistence patch ready",
            cache=runtime.cache.enabled,
            storage=str(runtime.storage.root),
        )
        try:
            async with inner_lifespan(application):
                yield
        finally:
            await close_runtime(runtime)

    app.router.lifespan_context = lifespan
    app.include_router(routes.router, tags=["analyses"])
    app.include_router(health.router)
    _add_error_handlers(app)
    _add_request_middleware(app, metrics, settings.storage.max_upload_bytes)


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    async def too_large(_: Request, exc: Exception) -> Response:
        return _error(413, str(exc))

    async def bad_cursor(_: Request, exc: Exception) -> Response:
        return _error(422, str(exc))

    async def bad_key(_: Request, exc: Exception) -> Response:
        return _error(400, str(exc))

    async def storage_down(_: Request, exc: Exception) -> Response:
        return _error(507, str(exc))

    async def dependency_down(_: Request, exc: Exception) -> Response:
        return _error(503, str(exc), {"Retry-After": routes.RETRY_AFTER_S})

    app.add_exception_handler(UploadTooLargeError, too_large)
    app.add_exception_handler(InvalidCursorError, bad_cursor)
    app.add_exception_handler(StorageKeyError, bad_key)
    app.add_exception_handler(StorageUnavailableError, storage_down)
    app.add_exception_handler(DependencyUnavailableError, dependency_down)


def _route_template(request: Request) -> str:
    """The matched route's path template (``/analyses/{job_id}``): low-cardinality labels."""
    route = request.scope.get("route")
    return str(getattr(route, "path", "unmatched"))


def _add_request_middleware(app: FastAPI, metrics: Metrics, max_upload_bytes: int) -> None:
    @app.middleware("http")
    async def request_context(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id[:64])
        started = time.perf_counter()
        try:
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_upload_bytes + MULTIPART_OVERHEAD_BYTES:
                response: Response = _error(
                    413, f"upload larger than the limit of {max_upload_bytes} bytes"
                )
            else:
                response = await call_next(request)
            response.headers[REQUEST_ID_HEADER] = request_id[:64]
            return response
        finally:
            elapsed = time.perf_counter() - started
            status = locals().get("response")
            metrics.request_seconds.labels(
                request.method,
                _route_template(request),
                str(status.status_code) if status is not None else "500",
            ).observe(elapsed)
            structlog.contextvars.unbind_contextvars("request_id")
