"""Fixtures for the API suite.

Layering:
- ``api``: the default app on the shared ``migrated_url`` + the shared Redis + a tmp storage
  root (Redis is flushed first so no cached page or media of another test leaks in).
- ``dedicated_pg`` / ``dedicated_redis``: servers owned by one test, so fault tests can stop
  and start them without touching the shared ones (``dedicated_pg.url``: the app role).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from app_patch import migrate as migrations
from app_patch.embedded import EmbeddedPostgres, EmbeddedRedis
from infra.loopback import free_port
from tests.conftest import RolePostgres
from tests.integration.api.harness import LiveApp, fresh_settings, running_app


@pytest.fixture
async def api(migrated_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[LiveApp]:
    """The default app over HTTP (shared database, shared Redis, own storage)."""
    settings = fresh_settings(db_url=migrated_url, redis_url=redis_url, data_dir=tmp_path)
    async with running_app(settings) as live:
        yield live


@pytest.fixture
async def client(api: LiveApp) -> AsyncIterator[httpx.AsyncClient]:
    async with api.client() as http:
        yield http


@pytest.fixture
def dedicated_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test alone, migrated to head (as the schema owner); stopped and
    released at the end. Its ``url`` is the application role's, like ``migrated_url``."""
    server = RolePostgres(
        tmp_path_factory.mktemp("dpg") / "data", database="api_fault", persistent=False
    )
    server.start()
    try:
        migrations.upgrade(server.owner_url)
        yield server
    finally:
        server.close()  # stops it if still running; a stopped one is left as is


@pytest.fixture
def dedicated_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("dredis"), port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
