"""Shared fixtures: a real PostgreSQL and a real Redis for the whole session.

PostgreSQL is the embedded pgserver build unless ``MA_TEST_DATABASE_URL`` points at a server
(each test database is then created on it). Redis is a ``redis-server`` started on a free
loopback port. Fault-injection tests start their own instances so they can stop them.

Like production, the app runs as the APPLICATION role and migrations as the schema OWNER
(``app_patch.db_roles``): every test database gets both roles (cluster-wide ``ma_owner`` and
``ma_app``), is migrated as the owner, and ``migrated_url`` (hence ``engine``,
``session_factory``, ``clean_db`` and the API harness) is the app's URL. What the app may not
do (TRUNCATE, DDL, DROP DATABASE) uses ``migrated_owner_url`` or the admin URL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app_patch import migrate as migrations
from app_patch.db import create_engine, create_session_factory, libpq_url, normalize_url
from app_patch.db_roles import EMBEDDED_APP, EMBEDDED_OWNER, ensure_roles, role_url
from app_patch.embedded import EmbeddedPostgres, EmbeddedRedis
from app_patch.models import ALL_TABLES
from app_patch.settings import PROJECT_ROOT, DatabaseSettings
from infra.loopback import free_port


@dataclass(frozen=True)
class RoleSet:
    """The owner and app roles of the test server. Passwords only for an external server
    (``MA_TEST_DATABASE_URL``); the embedded one trusts its Unix socket."""

    owner: str = EMBEDDED_OWNER
    app: str = EMBEDDED_APP
    owner_password: str | None = None
    app_password: str | None = None

    @classmethod
    def for_server(cls, admin_url: str) -> RoleSet:
        if normalize_url(admin_url).password is None:
            return cls()
        return cls(owner_password="ma-owner-test-pw", app_password="ma-app-test-pw")

    def ensure(self, admin_url: str, database: str) -> None:
        """Both roles and their grants in ``database`` (idempotent)."""
        ensure_roles(
            admin_url,
            database=database,
            owner=self.owner,
            owner_password=self.owner_password,
            app=self.app,
            app_password=self.app_password,
        )

    def owner_url(self, url: str) -> str:
        """The same database as the schema owner (migrations, TRUNCATE, DDL in tests)."""
        return role_url(url, self.owner, self.owner_password)

    def app_url(self, url: str) -> str:
        """The same database as the application role (what the API uses)."""
        return role_url(url, self.app, self.app_password)


class DatabaseFactory:
    """Creates uniquely named databases on one server and drops them at the end.

    ``create`` sets up both roles in the new database and returns the OWNER's URL (what
    migrations need); ``roles.app_url(url)`` gives the app's.
    """

    def __init__(self, admin_url: str, roles: RoleSet | None = None) -> None:
        self.admin_url = admin_url
        self.roles = roles or RoleSet.for_server(admin_url)
        self.created: list[str] = []

    def create(self, prefix: str = "t", *, with_roles: bool = True) -> str:
        """A new database: the owner's URL, or with ``with_roles=False`` (no grants, as
        before the roles existed) the admin's."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(libpq_url(self.admin_url), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        if not with_roles:
            return self.admin_url_of(name)
        self.roles.ensure(self.admin_url, name)
        return self.roles.owner_url(self.admin_url_of(name))

    def admin_url_of(self, name: str) -> str:
        return (
            normalize_url(self.admin_url).set(database=name).render_as_string(hide_password=False)
        )

    def drop_all(self) -> None:
        with psycopg.connect(libpq_url(self.admin_url), autocommit=True) as conn:
            for name in self.created:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


@dataclass
class RolePostgres(EmbeddedPostgres):
    """An embedded server whose ``url`` is the APPLICATION role's, like the shared fixtures:
    fault tests hand ``url`` to the app. ``admin_url`` is the bootstrap superuser's and
    ``owner_url`` the schema owner's (migrate with it)."""

    roles: RoleSet = field(default_factory=RoleSet)

    def start(self) -> str:
        super().start()
        self.roles.ensure(self.admin_url, self.database)
        return self.url

    @property
    def admin_url(self) -> str:
        return str(super().url)

    @property
    def owner_url(self) -> str:
        return self.roles.owner_url(self.admin_url)

    @property
    def url(self) -> str:
        return self.roles.app_url(self.admin_url)


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
def migrated_owner_url(databases: DatabaseFactory) -> str:
    """The schema owner's URL of the shared database at head (migrated as that owner)."""
    url = databases.create("head")
    migrations.upgrade(url)
    return url


@pytest.fixture(scope="session")
def migrated_url(databases: DatabaseFactory, migrated_owner_url: str) -> str:
    """The APPLICATION role's URL of the shared database at head, for the tests that only
    read and write rows (and the app they start)."""
    return databases.roles.app_url(migrated_owner_url)


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


CLEAN_LOCK_TIMEOUT = "10s"


@pytest.fixture
def clean_db(migrated_url: str, migrated_owner_url: str, databases: DatabaseFactory) -> str:
    """Empties every table before the test (the schema stays); returns the app's URL.

    TRUNCATE is the owner's: the app role may only DELETE. A failed test can leave a
    transaction open (its event loop closed under a running upload) that would block the
    TRUNCATE of every later test: after a lock timeout such leftovers are ended, once.
    """
    names = sql.SQL(", ").join(sql.Identifier(t.name) for t in ALL_TABLES)
    for attempt in range(2):
        with psycopg.connect(libpq_url(migrated_owner_url), autocommit=True) as conn:
            conn.execute(sql.SQL("SET lock_timeout = {}").format(CLEAN_LOCK_TIMEOUT))
            try:
                conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(names))
                return migrated_url
            except psycopg.errors.LockNotAvailable:
                if attempt:
                    raise
        end_idle_transactions(databases.admin_url_of(database_name(migrated_url)))
    raise AssertionError("unreachable")


def end_idle_transactions(admin_url: str) -> list[int]:
    """Terminate the sessions idling inside a transaction on ``admin_url``'s database."""
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
            " AND pg_terminate_backend(pid)"
        ).fetchall()
    return [int(r[0]) for r in rows]


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
    return PROJECT_ROOT
