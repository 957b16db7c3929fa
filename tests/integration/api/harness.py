"""Helpers for the API suite: a real uvicorn server in the test's event loop, settings,
real media files and direct database reads.

Everything talks to 127.0.0.1 (HTTP) or a Unix socket (PostgreSQL); no mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import os
import struct
import time
import uuid
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import hypothesis
import psycopg
import redis
import uvicorn
from fastapi import FastAPI
from PIL import Image

from app_patch.db import libpq_url
from app_patch.settings import (
    CacheSettings,
    DatabaseSettings,
    RedisSettings,
    ResilienceSettings,
    Settings,
    StorageSettings,
)
from app_patch.store_identity import MARKER_NAME, ensure_marker
from infra.loopback import free_port

T = TypeVar("T")

ANALYSIS_TYPES = ("auto", "basic", "image", "audio")
SERVER_START_TIMEOUT_S = 30.0
SERVER_STOP_TIMEOUT_S = 15.0
CLIENT_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- settings


def make_settings(
    *,
    db_url: str,
    redis_url: str | None,
    data_dir: Path,
    max_upload_bytes: int | None = None,
    pool_size: int = 20,
    max_overflow: int = 30,
    pool_timeout_s: float = 10.0,
) -> Settings:
    """Settings for one test app: its own storage root under ``data_dir``, fast recovery."""
    storage: dict[str, Any] = {"root": data_dir / "storage"}
    if max_upload_bytes is not None:
        storage["max_upload_bytes"] = max_upload_bytes
    return Settings(
        db=DatabaseSettings(
            url=db_url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout_s=pool_timeout_s,
            connect_timeout_s=2,
        ),
        redis=RedisSettings(url=redis_url),
        cache=CacheSettings(breaker_failure_threshold=2, breaker_recovery_s=0.5),
        storage=StorageSettings(**storage),
        resilience=ResilienceSettings(db_recovery_s=0.5, replay_interval_s=0.2),
        data_dir=data_dir,
    )


def flush_redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        client.flushdb()
    finally:
        client.close()


def fresh_settings(
    *, db_url: str, redis_url: str, data_dir: Path, max_upload_bytes: int | None = None
) -> Settings:
    """:func:`make_settings` on the shared Redis, flushed first so no cached page or media
    of another test leaks in."""
    flush_redis(redis_url)
    return make_settings(
        db_url=db_url, redis_url=redis_url, data_dir=data_dir, max_upload_bytes=max_upload_bytes
    )


def fuzz_settings(examples: int) -> hypothesis.settings:
    """A bounded, reproducible Hypothesis run: no deadline, no example database."""
    return hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )


def build_app(settings: Settings) -> FastAPI:
    """``api.main.create_app`` imported late, so this module loads before the app exists."""
    from api.main import create_app

    return create_app(settings)


# --------------------------------------------------------------------------- live server


class _TestServer(uvicorn.Server):
    """uvicorn without its signal handlers: pytest keeps owning SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class LiveApp:
    """One running app: its base URL, its settings and where it stores files."""

    base_url: str
    settings: Settings
    app: FastAPI

    @property
    def db_url(self) -> str:
        url = self.settings.db.url
        assert url is not None
        return url.get_secret_value()

    @property
    def storage_root(self) -> Path:
        return Path(self.settings.storage.root)

    @property
    def outbox_dir(self) -> Path:
        return self.storage_root / "outbox"

    def outbox_files(self) -> list[Path]:
        if not self.outbox_dir.exists():
            return []
        return sorted(self.outbox_dir.glob("*.json"))

    def client(
        self, *, timeout: float = CLIENT_TIMEOUT_S, connections: int = 100
    ) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            trust_env=False,  # never route 127.0.0.1 through a proxy from the environment
        )


async def _serve(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn exits the process when the lifespan fails
        raise RuntimeError(f"uvicorn exited during startup (code {exc.code})") from None


@contextlib.asynccontextmanager
async def serve(app: FastAPI, settings: Settings) -> AsyncIterator[LiveApp]:
    """Run ``app`` on 127.0.0.1:<free port> as a task of the running loop, lifespan on."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        log_config=None,
        timeout_graceful_shutdown=5,
        backlog=2048,
    )
    server = _TestServer(config)
    task = asyncio.create_task(_serve(server), name=f"uvicorn-{port}")
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        if task.done():
            task.result()  # raises the startup error
            raise RuntimeError("uvicorn stopped before it started")
        if time.monotonic() > deadline:
            server.should_exit = True
            task.cancel()
            raise TimeoutError(f"uvicorn did not start within {SERVER_START_TIMEOUT_S} s")
        await asyncio.sleep(0.02)
    try:
        yield LiveApp(base_url=f"http://127.0.0.1:{port}", settings=settings, app=app)
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), SERVER_STOP_TIMEOUT_S)
        except TimeoutError:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _new_root(root: Path) -> uuid.UUID:
    root.mkdir(parents=True, exist_ok=True)
    return ensure_marker(root)


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[LiveApp]:
    """The app on its own storage root. Tests share databases, so a root that is new to the
    database is adopted the way an operator would: the database records it instead of the
    previous test's root."""
    root = Path(settings.storage.root)
    if settings.db.url is not None and not (root / MARKER_NAME).exists():
        store_id = await asyncio.to_thread(_new_root, root)
        url = settings.db.url.get_secret_value()
        async with await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=True) as conn:
            await conn.execute("DELETE FROM store_identity")
            await conn.execute("INSERT INTO store_identity (store_id) VALUES (%s)", (store_id,))
    async with serve(build_app(settings), settings) as live:
        yield live


# --------------------------------------------------------------------------- media


def png_bytes(width: int = 37, height: int = 21, seed: int = 0) -> bytes:
    """A real PNG made with Pillow (the seed changes the pixels, hence the hash)."""
    img = Image.new("RGB", (width, height), ((seed * 37) % 256, (seed * 91) % 256, 200))
    img.putpixel((0, 0), (seed % 256, (seed // 256) % 256, 7))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seconds: float = 1.0, sample_rate: int = 8000, channels: int = 1) -> bytes:
    """A real PCM WAV (16-bit sine) made with the stdlib ``wave`` module."""
    frames = int(seconds * sample_rate)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        samples = bytearray()
        for i in range(frames):
            value = int(12000 * math.sin(2 * math.pi * 440 * i / sample_rate))
            samples += struct.pack("<h", value) * channels
        out.writeframes(bytes(samples))
    return buf.getvalue()


def unique_text(label: str = "payload") -> bytes:
    """Distinct contents every call (distinct sha256), valid UTF-8."""
    return f"{label} {uuid.uuid4()} {os.urandom(8).hex()}\n".encode()


# --------------------------------------------------------------------------- requests


async def upload(
    client: httpx.AsyncClient,
    content: bytes,
    *,
    analysis_type: str | None = "basic",
    filename: str = "upload.bin",
    content_type: str = "application/octet-stream",
    idempotency_key: str | None = None,
    client_ref: str | None = None,
) -> httpx.Response:
    data: dict[str, str] = {}
    if analysis_type is not None:
        data["analysis_type"] = analysis_type
    if client_ref is not None:
        data["client_ref"] = client_ref
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return await client.post(
        "/analyses",
        files={"file": (filename, content, content_type)},
        data=data,
        headers=headers,
    )


def describe(response: httpx.Response) -> str:
    """``METHOD path -> status body`` for assertion messages."""
    body = response.text
    if len(body) > 600:
        body = body[:600] + "..."
    return f"{response.request.method} {response.request.url} -> {response.status_code} {body}"


async def ready(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    response = await client.get("/health/ready")
    return response.status_code, response.json()


async def wait_for(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    timeout_s: float,
    interval_s: float = 0.2,
) -> T:
    """Poll ``probe`` until ``accept`` holds; returns the last value either way."""
    deadline = time.monotonic() + timeout_s
    value = await probe()
    while not accept(value) and time.monotonic() < deadline:
        await asyncio.sleep(interval_s)
        value = await probe()
    return value


# --------------------------------------------------------------------------- database


async def job_rows(
    db_url: str, where: str = "TRUE", params: tuple[Any, ...] = ()
) -> list[uuid.UUID]:
    """Job ids straight from PostgreSQL (psycopg, not the app)."""
    async with await psycopg.AsyncConnection.connect(libpq_url(db_url), autocommit=True) as conn:
        cur = await conn.execute(f"SELECT id FROM analysis_jobs WHERE {where}", params)
        return [row[0] for row in await cur.fetchall()]


async def scalar(db_url: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    async with await psycopg.AsyncConnection.connect(libpq_url(db_url), autocommit=True) as conn:
        cur = await conn.execute(query, params)
        row = await cur.fetchone()
        return None if row is None else row[0]


def metric_values(text: str, name_fragment: str) -> dict[str, float]:
    """Sample lines of a Prometheus exposition whose metric name contains ``name_fragment``."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        if name_fragment in sample.split("{", 1)[0]:
            with contextlib.suppress(ValueError):
                found[sample] = float(value)
    return found


def timeout_counters(text: str) -> dict[str, float]:
    """Non-zero samples of every counter whose family name mentions a timeout."""
    families = set()
    for line in text.splitlines():
        parts = line.split()
        is_counter = len(parts) == 4 and parts[:2] == ["#", "TYPE"] and parts[3] == "counter"
        if is_counter and "timeout" in parts[2]:
            families.add(parts[2])
    found: dict[str, float] = {}
    for sample, value in metric_values(text, "timeout").items():
        name = sample.split("{", 1)[0]
        if value and (name in families or name.removesuffix("_total") in families):
            found[sample] = value
    return found
