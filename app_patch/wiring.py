"""``install(app)``: patch persistence, caching, storage and degradation into a FastAPI app."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app_patch import health, routes
from app_patch.access import AccessGuard
from app_patch.breaker import DependencyUnavailableError
from app_patch.logs import configure_logging
from app_patch.metrics import Metrics
from app_patch.runtime import close_runtime, open_runtime
from app_patch.schemas import InvalidCursorError
from app_patch.settings import Settings, get_settings
from app_patch.storage import StorageKeyError, StorageUnavailableError, UploadTooLargeError
from app_patch.store_identity import StoreMismatchError
from app_patch.submission import Analyser
from app_patch.upload_gate import MULTIPART_OVERHEAD_BYTES, UploadGate

log = structlog.get_logger(__name__)
REQUEST_ID_HEADER = "X-Request-ID"


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
    app.add_middleware(
        AccessGuard,
        digests=settings.api.key_digests(),
        metrics=settings.api.metrics_access,
        docs=settings.api.docs_access,
    )
    _add_request_middleware(app, metrics, settings)


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
        log.error("storage unavailable", cause=str(exc))
        return _error(507, "storage unavailable: the upload was not stored")

    async def dependency_down(_: Request, exc: Exception) -> Response:
        log.warning("dependency unavailable", cause=str(exc))
        return _error(
            503, "temporarily unavailable; retry later", {"Retry-After": routes.RETRY_AFTER_S}
        )

    async def invalid_request(_: Request, exc: Exception) -> Response:
        # FastAPI's default body echoes each bad value back ("input"): never the input here
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type")}
            for err in exc.errors()[:20]
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(UploadTooLargeError, too_large)
    app.add_exception_handler(InvalidCursorError, bad_cursor)
    app.add_exception_handler(StorageKeyError, bad_key)
    app.add_exception_handler(StorageUnavailableError, storage_down)
    app.add_exception_handler(StoreMismatchError, storage_down)
    app.add_exception_handler(DependencyUnavailableError, dependency_down)


class RequestContextMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware task/stream per request): request id in and out and in
    every log line, latency per route template, and an early 413 on a declared oversize body.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, max_upload_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = (headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex)[:64]
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        try:
            declared = headers.get("content-length", "")
            limit = self.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
            if declared.isdigit() and int(declared) > limit:
                too_large = _error(
                    413, f"upload larger than the limit of {self.max_upload_bytes} bytes"
                )
                await too_large(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.request_seconds.labels(scope["method"], str(route), str(status)).observe(
                time.perf_counter() - started
            )
            structlog.contextvars.unbind_contextvars("request_id")


def _add_request_middleware(app: FastAPI, metrics: Metrics, settings: Settings) -> None:
    """Request context outermost; the upload gate innermost (appended, whatever the order of
    ``add_middleware`` calls), so a request refused by access control never takes an upload
    slot, and the gate's byte count sits right at the handler's ``receive``."""
    app.user_middleware.append(
        Middleware(
            UploadGate,
            max_upload_bytes=settings.storage.max_upload_bytes,
            max_concurrent_uploads=settings.api.max_concurrent_uploads,
        )
    )
    max_upload_bytes = settings.storage.max_upload_bytes
    app.add_middleware(RequestContextMiddleware, metrics=metrics, max_upload_bytes=max_upload_bytes)
