"""ASGI apps that the load benchmark serves with uvicorn in a subprocess.

``app``: the real API (``api.main.create_app`` from the environment's settings), wrapped in a
thin counter: every exception that escapes the app (Starlette answers those with a 500 and
re-raises them) is counted by class, SQLAlchemy's pool ``TimeoutError`` separately, and the
pool's checked-out connections are tracked (current and peak) through pool events.
``GET /__bench__/stats`` answers those counters; every other request goes to the API
untouched.

``bare``: the limit. A plain ASGI app with no framework that answers the same routes with
fixed bytes (a stored job's JSON for ``GET /analyses/{id}``; for ``POST /analyses`` it reads
the whole body first). Same uvicorn, same driver: the HTTP stack's ceiling on this machine.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

Scope = dict[str, Any]
Message = dict[str, Any]
STATS_PATH = "/__bench__/stats"
BARE_BODY_ENV = "MA_BENCH_BARE_BODY"


class Counting:
    """Wraps an ASGI app; counts escaping exceptions and pool usage."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.exceptions: Counter[str] = Counter()
        self.pool_timeouts = 0
        self.checked_out = 0
        self.peak_checked_out = 0
        self.requests = 0
        self._pool_hooked = False

    def _hook_pool(self) -> None:
        runtime = getattr(getattr(self.inner, "state", None), "ma_runtime", None)
        if runtime is None or self._pool_hooked:
            return
        pool = runtime.engine.sync_engine.pool

        def checkout(*_: Any) -> None:
            self.checked_out += 1
            self.peak_checked_out = max(self.peak_checked_out, self.checked_out)

        def checkin(*_: Any) -> None:
            self.checked_out -= 1

        event.listen(pool, "checkout", checkout)
        event.listen(pool, "checkin", checkin)
        self._pool_hooked = True

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "exceptions": dict(self.exceptions),
            "pool_timeouts": self.pool_timeouts,
            "pool_checked_out": self.checked_out,
            "pool_peak_checked_out": self.peak_checked_out,
            "pid": os.getpid(),
        }

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        if not self._pool_hooked:
            self._hook_pool()
        if scope["path"] == STATS_PATH:
            body = orjson.dumps(self.stats())
            if scope.get("query_string") == b"reset=1":
                self.reset_peak()
            await _send_json(send, 200, body)
            return
        self.requests += 1
        try:
            await self.inner(scope, receive, send)
        except PoolTimeoutError:
            self.pool_timeouts += 1
            self.exceptions["sqlalchemy.exc.TimeoutError"] += 1
            raise
        except Exception as exc:
            self.exceptions[f"{type(exc).__module__}.{type(exc).__qualname__}"] += 1
            raise

    def reset_peak(self) -> None:
        self.peak_checked_out = self.checked_out


async def _send_json(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def bare(scope: Scope, receive: Any, send: Any) -> None:
    """The limit: no framework, fixed bytes, the request body read in full."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = bool(message.get("more_body"))
    body = _BARE_BODY
    status = 201 if scope["method"] == "POST" else 200
    if scope["path"] == STATS_PATH:
        body = orjson.dumps({"pool_timeouts": 0, "exceptions": {}, "pid": os.getpid()})
    elif scope["path"].startswith("/health"):
        body = b'{"status":"ok"}'
    await _send_json(send, status, body)


_BARE_BODY = os.environ.get(BARE_BODY_ENV, '{"status":"succeeded"}').encode()


def _real_app() -> Counting:
    from api.main import app as api_app  # what `uvicorn api.main:app` serves

    return Counting(api_app)


app: Any = _real_app() if os.environ.get("MA_BENCH_APP", "real") == "real" else bare
