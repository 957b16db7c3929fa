"""Async engine and session factory (SQLAlchemy 2 on psycopg 3)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool

from app_patch.settings import DatabaseSettings

# SQLAlchemy names a pool's logger after its class: keep ours as quiet as its own pools
logging.getLogger(f"{__name__}.ObservedQueuePool").setLevel(logging.WARNING)

PoolObserver = Callable[[float, bool], None]
"""Called after every checkout with (seconds waited, timed out)."""


class ObservedQueuePool(AsyncAdaptedQueuePool):
    """The default async pool, reporting each checkout's wait (queue wait or a new connect)
    and pool timeouts, for the metrics. ``observer`` survives ``dispose()``."""

    observer: PoolObserver | None = None

    def _do_get(self) -> Any:
        started = time.perf_counter()
        timed_out = False
        try:
            return super()._do_get()
        except PoolTimeoutError:
            timed_out = True
            raise
        finally:
            if self.observer is not None:
                self.observer(time.perf_counter() - started, timed_out)

    def recreate(self) -> ObservedQueuePool:
        fresh = super().recreate()
        assert isinstance(fresh, ObservedQueuePool)
        fresh.observer = self.observer
        return fresh


class DatabaseConfigError(ValueError):
    """The database URL cannot be used (wrong scheme, unparsable)."""


def normalize_url(raw: str) -> URL:
    """Accept postgres://, postgresql:// and postgresql+psycopg:// and return the psycopg form."""
    try:
        url = make_url(raw)
    except ArgumentError as exc:
        raise DatabaseConfigError(f"malformed database URL: {exc}") from None
    if url.drivername in {
        "postgres",
        "postgresql",
        "postgresql+psycopg",
        "postgresql+psycopg_async",
    }:
        return url.set(drivername="postgresql+psycopg")
    raise DatabaseConfigError(
        f"unsupported database URL scheme {url.drivername!r}: expected postgresql+psycopg://"
    )


def libpq_url(raw: str) -> str:
    """Any accepted URL as a plain ``postgresql://`` URI, for tools that want a URI."""
    return normalize_url(raw).set(drivername="postgresql").render_as_string(hide_password=False)


def libpq_conninfo(raw: str, *, database: str | None = None) -> str:
    """Keyword/value libpq parameters for psycopg.connect and the server's tools.

    Not a ``postgresql://`` URI: libpq rejects characters SQLAlchemy leaves unescaped
    (a space in a password); ``make_conninfo`` quotes each value itself. Query parameters
    (``?host=/socket/dir`` of the embedded server) are kept; the URL's parts win over them.
    """
    parsed = normalize_url(raw)
    params: dict[str, str | int] = {}
    for key, value in parsed.query.items():
        params[key] = value if isinstance(value, str) else ",".join(value)
    for key, part in (
        ("user", parsed.username),
        ("password", parsed.password),
        ("host", parsed.host),
        ("port", parsed.port),
        ("dbname", database if database is not None else parsed.database),
    ):
        if part is not None and part != "":
            params[key] = part if isinstance(part, int) else str(part)
    return make_conninfo("", **params)


def redacted(url: URL | str) -> str:
    """The URL with its password hidden, safe for logs and error messages."""
    if isinstance(url, str):
        try:
            url = make_url(url)
        except ArgumentError:
            return "<unparsable URL>"
    return url.render_as_string(hide_password=True)


def create_engine(settings: DatabaseSettings, url: str | URL) -> AsyncEngine:
    """Pooled async engine; pool_size + max_overflow is the connection ceiling (50 by default)."""
    resolved = normalize_url(url) if isinstance(url, str) else url
    return create_async_engine(
        resolved,
        poolclass=ObservedQueuePool,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout_s,
        pool_recycle=settings.pool_recycle_s,
        pool_pre_ping=settings.pool_pre_ping,
        echo=settings.echo,
        hide_parameters=True,  # a statement's values never reach an error text or a log
        connect_args={
            "connect_timeout": settings.connect_timeout_s,
            "options": f"-c statement_timeout={settings.statement_timeout_ms}",
            "application_name": "media-analysis-kit",
        },
    )


def observe_pool(engine: AsyncEngine, observer: PoolObserver) -> None:
    pool = engine.sync_engine.pool
    if isinstance(pool, ObservedQueuePool):
        pool.observer = observer


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def engine_scope(settings: DatabaseSettings, url: str | URL) -> AsyncIterator[AsyncEngine]:
    """An engine that is always disposed, for scripts and tasks."""
    engine = create_engine(settings, url)
    try:
        yield engine
    finally:
        await engine.dispose()


def is_database_outage(exc: BaseException) -> bool:
    """Connection-level failures count against the breaker; bad queries and conflicts do not."""
    if isinstance(exc, sa_exc.DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(
            exc, sa_exc.OperationalError | sa_exc.InterfaceError
        )
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.PendingRollbackError):
        return True  # pool exhausted by hung connections; a transaction broken by a dead one
    # a bare OSError may come from the file store (EIO, EROFS): never PostgreSQL's breaker
    return isinstance(exc, psycopg.OperationalError | ConnectionError | asyncio.TimeoutError)
