"""Driver SQL on a session's connection, in its transaction, failing as SQLAlchemy would."""

from __future__ import annotations

from typing import Any, cast

import psycopg
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.pool import PoolProxiedConnection


async def fetch_one(
    session: AsyncSession, sql: str, params: dict[str, Any]
) -> tuple[Any, ...] | None:
    """Run driver SQL on the session's connection, in its transaction; its first row.

    Straight on psycopg's connection: no greenlet hop per statement, no SQLAlchemy execution
    context or result metadata (together most of the write's cost above the driver). Errors
    still come out as SQLAlchemy would raise them (``_as_sqlalchemy_error``).
    """
    sync_session = session.sync_session
    if sync_session.autoflush and (sync_session.new or sync_session.dirty or sync_session.deleted):
        await session.flush()  # what session.execute would do for pending objects
    connection = await session.connection()
    driver = cast("psycopg.AsyncConnection[Any]", _pooled(connection).driver_connection)
    try:
        cursor = await driver.execute(sql, params)
        row: tuple[Any, ...] | None = await cursor.fetchone()
    except psycopg.Error as exc:
        raise await _as_sqlalchemy_error(connection, sql, params, exc) from exc
    except BaseException as exc:
        if not isinstance(exc, Exception) or isinstance(exc, TimeoutError):
            await connection.invalidate()  # cut off mid-statement: the protocol state is unknown
        raise
    return row


def _pooled(connection: AsyncConnection) -> PoolProxiedConnection:
    assert connection.sync_connection is not None  # session.connection() began it
    return connection.sync_connection.connection


async def _as_sqlalchemy_error(
    connection: AsyncConnection, sql: str, params: dict[str, Any], exc: psycopg.Error
) -> StatementError:
    """What SQLAlchemy makes of a driver error (``IntegrityError``, ``OperationalError``...,
    parameters hidden as the engine says); a lost connection is invalidated, as it would."""
    dialect = connection.dialect
    lost = dialect.is_disconnect(cast(Any, exc), _pooled(connection).dbapi_connection, None)
    if lost:
        await connection.invalidate(exc)
    return DBAPIError.instance(
        sql,
        params,
        exc,
        dialect.loaded_dbapi.Error,
        hide_parameters=connection.sync_engine.hide_parameters,
        connection_invalidated=lost,
        dialect=dialect,
    )
