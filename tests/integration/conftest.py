"""Fixtures the integration tests share: a file store under the test's tmp_path; a raw
client on the shared Redis (emptied first), a cache with explicit TTLs on it, and the history
service and media lookup over that cache; a fresh database at head for the role tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch import migrate as migrations
from app_patch.cache import RedisCache
from app_patch.media_lookup import MediaLookup
from app_patch.service import HistoryService
from app_patch.storage import Storage
from tests.conftest import DatabaseFactory, database_name
from tests.integration.cache_support import make_settings
from tests.integration.db_roles_support import Db
from tests.integration.test_storage_support import storage_settings

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def storage(tmp_path: Path) -> Storage:
    return await Storage.open(storage_settings(tmp_path / "root"))


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client to inspect the shared test Redis; starts each test from an empty db."""
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def cache(redis_url: str, raw: Redis) -> AsyncIterator[RedisCache]:
    cache = RedisCache(make_settings(), redis_url)
    yield cache
    await cache.close()


@pytest.fixture
def service(session_factory: Sessions, cache: RedisCache) -> HistoryService:
    return HistoryService(session_factory, cache)


@pytest.fixture
def media_lookup(session_factory: Sessions, cache: RedisCache) -> MediaLookup:
    return MediaLookup(session_factory, cache)


@pytest.fixture
def db(databases: DatabaseFactory) -> Db:
    owner = databases.create("roles")
    migrations.upgrade(owner)
    name = database_name(owner)
    return Db(databases.admin_url_of(name), owner, databases.roles.app_url(owner))
