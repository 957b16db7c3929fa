"""Who may call what: optional API keys, and where /metrics and the docs are served.

Keys are configured as SHA-256 digests (``MA_API_KEYS`` / ``MA_API_KEYS_FILE``), never as the
keys themselves, so neither the environment nor the secret file the API reads holds a usable
key. A request presents its key as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``;
its digest is compared with every configured digest in constant time.

``/health/live`` and ``/health/ready`` are always open (orchestrators probe them). ``/metrics``
and the docs (``/docs``, ``/redoc``, ``/openapi.json``) are each ``public``, ``key`` (behind the
key when keys are configured) or ``off`` (404). Everything else needs a key once keys are set.
A pure ASGI middleware: no body is read before the decision.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Literal

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

Access = Literal["public", "key", "off"]
ALWAYS_OPEN = frozenset({"/health/live", "/health/ready"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
METRICS_PATHS = frozenset({"/metrics"})


def key_digest(key: str) -> str:
    """The form a key is configured in (``invoke secrets`` writes it)."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_digests(raw: str) -> frozenset[str]:
    """Comma- or newline-separated hex digests (an optional ``sha256:`` prefix is allowed)."""
    digests = set()
    for item in raw.replace("\n", ",").split(","):
        value = item.strip().lower().removeprefix("sha256:")
        if not value:
            continue
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("each API key must be given as its SHA-256 hex digest")
        digests.add(value)
    return frozenset(digests)


class AccessGuard:
    """401 without a valid key where one is needed; 404 where a surface is turned off."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        digests: Iterable[str],
        metrics: Access = "key",
        docs: Access = "key",
    ) -> None:
        self.app = app
        self.digests = tuple(sorted(digests))
        self.metrics = metrics
        self.docs = docs

    def _rule(self, path: str) -> Access:
        if path in ALWAYS_OPEN:
            return "public"
        if path in METRICS_PATHS:
            return self.metrics
        if path in DOCS_PATHS:
            return self.docs
        return "key"

    def _allowed(self, headers: Headers) -> bool:
        presented = headers.get("x-api-key")
        if presented is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            presented = token.strip() if scheme.lower() == "bearer" else None
        if not presented:
            return False
        digest = key_digest(presented)
        matched = False
        for known in self.digests:  # compare with all of them: no early exit to time
            matched |= hmac.compare_digest(digest, known)
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = self._rule(scope["path"])
        if rule == "off":
            await JSONResponse({"detail": "not found"}, 404)(scope, receive, send)
            return
        if rule == "key" and self.digests and not self._allowed(Headers(scope=scope)):
            denied = JSONResponse(
                {"detail": "a valid API key is required"}, 401, {"WWW-Authenticate": "ApiKey"}
            )
            await denied(scope, receive, send)
            return
        await self.app(scope, receive, send)
