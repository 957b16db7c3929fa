"""Alembic environment: async engine on psycopg 3, metadata from app_patch.models.

Every online run holds a transaction-scoped PostgreSQL advisory lock before it reads the
current revision, so two hosts migrating at once apply each revision exactly once.

The URL: ``-x url=...``, else ``sqlalchemy.url`` (``app_patch.migrate`` sets it), else the
schema OWNER's (``MA_DB_MIGRATION_URL``, falling back to ``MA_DB_URL``, else the embedded
server's owner role): migrations create and alter tables, which the app role may not.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app_patch.db import normalize_url
from app_patch.models import Base
from app_patch.settings import get_settings
from app_patch.target import migration_url

MIGRATION_LOCK_KEY = 0x6D61_6D69  # "mami": media-analysis migrations

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    explicit = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    raw = explicit or migration_url(get_settings())
    return normalize_url(raw).render_as_string(hide_password=False)


def _configure(connection: Connection | None = None, **kwargs: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_locked(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        # read under the lock, so a run that waited reports what it found, not what it feared
        config.attributes["revision_before"] = context.get_context().get_current_revision()
        context.run_migrations()
        config.attributes["revision_after"] = context.get_context().get_current_revision()


async def run_migrations_online() -> None:
    given = config.attributes.get("connection")  # pytest-alembic hands us an engine
    if isinstance(given, Connection):
        _run_locked(given)
        return
    if isinstance(given, Engine):
        with given.connect() as connection:
            _run_locked(connection)
            connection.commit()
        return
    engine = create_async_engine(_url(), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_locked)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
