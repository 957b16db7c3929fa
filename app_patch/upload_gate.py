"""The ASGI gate in front of ``POST /analyses``: body bytes counted as delivered, uploads capped.

The form itself is parsed in ``ingest``; this gate only sees bytes, so it also holds for a
chunked body or a lying Content-Length.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app_patch.storage import UploadTooLargeError

UPLOAD_PATH = "/analyses"
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries, part headers and the text fields
RETRY_AFTER_S = "5"


class BodyTooLargeError(UploadTooLargeError):
    """The request body crossed the byte limit, whatever its headers declared (413)."""


def _route_path(scope: Scope) -> str:
    """The path the router matches (without a mount's ``root_path``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


class UploadGate:
    """Counts every request's body bytes as the app receives them and caps concurrent uploads.

    Counting at the ASGI ``receive`` is the only place that sees every body byte whatever the
    headers say; a request past the limit gets ``BodyTooLargeError`` from ``receive`` (the
    handler's staging removes its tmp file as the error passes) and a 413. The upload cap is
    per process (each worker has its own); a full gate answers 503 without touching the body.
    """

    def __init__(self, app: ASGIApp, *, max_upload_bytes: int, max_concurrent_uploads: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_body_bytes = max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        self.max_concurrent_uploads = max_concurrent_uploads
        self.in_flight = 0  # one event loop per app: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_upload = scope["method"] == "POST" and _route_path(scope) == UPLOAD_PATH
        if is_upload and self.in_flight >= self.max_concurrent_uploads:
            busy = JSONResponse(
                {"detail": "too many uploads in progress; retry later"},
                503,
                {"Retry-After": RETRY_AFTER_S},
            )
            await busy(scope, receive, send)
            return
        received = 0
        over = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, over
            if over:  # never hand out another byte of a refused body
                raise BodyTooLargeError(self.max_upload_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    over = True
                    raise BodyTooLargeError(self.max_upload_bytes)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        if is_upload:
            self.in_flight += 1
        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLargeError as exc:
            if started:  # too late for a 413: let the server close the connection
                raise
            await JSONResponse({"detail": str(exc)}, 413)(scope, receive, send)
        finally:
            if is_upload:
                self.in_flight -= 1
