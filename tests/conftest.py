"""Shared fixtures: a real PostgreSQL and a real Redis for the whole session.

PostgreSQL is the embedded pgserver build unless ``MA_TEST_DATABASE_URL`` points at a server
(each test database is then created on it). Redis is a ``redis-server`` started on a free
loopback port. Fault-injection tests start their own instances so they can stop them.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app_patch import migrate as migrations
from app_patch.db import create_engine, create_session_factory, normalize_url
from app_patch.embedded import EmbeddedPostgres, EmbeddedRedis
from app_patch.models import ALL_TABLES
from app_patch.settings import DatabaseSettings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def libpq(url: str) -> str:
    """A SQLAlchemy URL as a plain libpq URI for psycopg.connect()."""
    return normalize_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class DatabaseFactory:
    """Creates uniquely named databases on one server and drops them at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def create(self, prefix: str = "t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(libpq(self.admin_url), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        return (
            normalize_url(self.admin_url).set(database=name).render_as_string(hide_password=False)
        )

    def drop_all(self) -> None:
        with psycopg.connect(libpq(self.admin_url), autocommit=True) as conn:
            for name in self.created:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("MA_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(
        tmp_path_factory.mktemp("pg") / "data", database="postgres", persistent=False
    )
    server.start()
    yield server.url
    server.close()


@pytest.fixture(scope="session")
def databases(pg_admin_url: str) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(pg_admin_url)
    yield factory
    factory.drop_all()


@pytest.fixture(scope="session")
def migrated_url(databases: DatabaseFactory) -> str:
    """A database at head, shared by the tests that only read and write rows."""
    url = databases.create("head")
    migrations.upgrade(url)
    return url


@pytest.fixture(scope="session")
def db_settings() -> DatabaseSettings:
    return DatabaseSettings(pool_size=20, max_overflow=30, pool_timeout_s=10)


@pytest.fixture(scope="session")
async def engine(migrated_url: str, db_settings: DatabaseSettings) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(db_settings, migrated_url)
    yield eng
    await eng.dispose()


@pytest.fixture(scope="session")
def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_session_factory(engine)


@pytest.fixture
def clean_db(migrated_url: str) -> str:
    """Empties every table before the test (the schema stays)."""
    names = ", ".join(f'"{t.name}"' for t in ALL_TABLES)
    with psycopg.connect(libpq(migrated_url), autocommit=True) as conn:
        conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")  # type: ignore[arg-type]
    return migrated_url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


def database_name(url: str) -> str:
    return str(make_url(url).database)


@pytest.fixture
def project_root() -> Path:
    return Path(__file__).resolve().parent.parent
