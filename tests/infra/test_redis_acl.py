"""The Redis app user's rules (infra/redis_acl.py) against what app_patch/cache.py really sends.

Statically: the command list is derived from the cache module's source. Live: a local
``redis-server`` with the same users as the image's entrypoint declares, the real
``RedisCache`` driven through every path (miss and fill, hit, write-through, invalidation,
history pages, PING, a NOSCRIPT reload), then ``ACL LOG`` must be empty; and what the app must
not do is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from pydantic import BaseModel
from redis.exceptions import NoPermissionError, RedisError

import app_patch.cache.client as cache_module
from app_patch.cache import Kind, Placement, RedisCache, TtlPolicy
from app_patch.schemas import HistoryPage
from app_patch.settings import CacheSettings, RedisSettings, Settings
from infra.loopback import free_port
from infra.redis_acl import (
    APP_COMMANDS,
    APP_KEY_PATTERN,
    DENIED_TO_APP,
    admin_rules,
    app_rules,
    maxmemory_bytes,
)

APP_USER, APP_PASSWORD = "media-app", "app pass:w/rd"
ADMIN_USER, ADMIN_PASSWORD = "ma-admin", "admin@pass"
# redis-py method -> Redis command, for the methods the cache calls on a client.
CLIENT_METHODS = {"get": "get", "ping": "ping", "set": "set"}


def derived_commands() -> set[str]:
    """The commands app_patch/cache.py sends, read from its source."""
    source = Path(cache_module.__file__).read_text(encoding="utf-8")
    in_scripts = {m.lower() for m in re.findall(r"redis\.call\('([A-Za-z]+)'", source)}
    methods = set(re.findall(r"lambda c: c\.([a-z_]+)\(", source))
    unknown = methods - set(CLIENT_METHODS)
    assert not unknown, f"map these redis-py methods to commands: {unknown}"
    direct = {CLIENT_METHODS[m] for m in methods}
    # register_script -> redis-py's Script: EVALSHA, and SCRIPT LOAD after a NOSCRIPT.
    scripts = {"evalsha", "script|load"} if "register_script(" in source else set()
    return in_scripts | direct | scripts


def test_app_commands_are_exactly_what_the_cache_sends() -> None:
    assert derived_commands() == set(APP_COMMANDS)
    assert len(APP_COMMANDS) == len(set(APP_COMMANDS))


def test_app_rules_start_from_nothing_and_confine_keys() -> None:
    rules = app_rules().split()
    assert rules[:2] == ["resetkeys", "resetchannels"]
    assert f"~{APP_KEY_PATTERN}" in rules and APP_KEY_PATTERN == "ma:v1:*"
    assert rules.index("-@all") < min(rules.index(f"+{c}") for c in APP_COMMANDS)
    assert not any(rule.startswith("+@") for rule in rules)
    assert admin_rules() == "~* &* +@all"


def test_maxmemory_leaves_headroom_under_the_container_limit() -> None:
    assert maxmemory_bytes(256, 75) == 192 * 1024 * 1024
    assert maxmemory_bytes(1024, 80) < 1024 * 1024 * 1024


def _sha256(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A loopback redis-server with `default` disabled and the image's two users."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (scripts/bootstrap installs it)")
    directory = tmp_path_factory.mktemp("redis-acl")
    port = free_port()
    conf = directory / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {port}",
                f"dir {directory}",
                'save ""',
                "appendonly no",
                "user default reset",
                # As the entrypoint writes them: passwords only as SHA-256.
                f"user {ADMIN_USER} reset on #{_sha256(ADMIN_PASSWORD)} {admin_rules()}",
                f"user {APP_USER} reset on #{_sha256(APP_PASSWORD)} {app_rules()}",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [server, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("redis-server did not start")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _admin(port: int) -> redis.Redis:
    return redis.Redis(port=port, username=ADMIN_USER, password=ADMIN_PASSWORD)


def _app_url(port: int) -> str:
    password = quote(APP_PASSWORD, safe="")
    return f"redis://{APP_USER}:{password}@127.0.0.1:{port}/0"


class Item(BaseModel):
    name: str


def test_the_real_cache_needs_nothing_beyond_the_rules(acl_redis: int) -> None:
    admin = _admin(acl_redis)
    admin.acl_log_reset()
    settings = Settings(
        redis=RedisSettings(url=_app_url(acl_redis), op_timeout_s=2, socket_timeout_s=2),
        cache=CacheSettings(),
    )

    async def exercise() -> RedisCache:
        cache = RedisCache.from_settings(settings)
        placement = Placement(TtlPolicy.result)

        async def load() -> Item:
            return Item(name="loaded")

        async def page() -> HistoryPage:
            return HistoryPage(items=[], next_cursor=None)

        assert await cache.ping()
        for _ in range(2):  # miss + fill, then hit
            got = await cache.get_or_load(Kind.result, "r1", Item, load, lambda _: placement)
            assert got == Item(name="loaded")
        await cache.put(Kind.result, "r2", Item(name="written"), placement)
        await cache.invalidate(Kind.result, "r1")
        await cache.bump_history()
        for _ in range(2):
            await cache.get_history_page(limit=10, cursor=None, filters=None, loader=page)
        admin.script_flush()  # the next script call gets NOSCRIPT: SCRIPT LOAD, then EVALSHA
        await cache.put(Kind.result, "r3", Item(name="after flush"), placement)
        await cache.close()
        return cache

    cache = asyncio.run(exercise())

    stats = cache.stats.snapshot()
    errors = stats["errors_other"] + sum(k["errors"] for k in stats["kinds"].values())
    assert errors == 0, stats
    assert stats["kinds"]["result"]["hits"] == 1
    assert stats["kinds"]["result"]["writes"] == 2
    assert admin.acl_log() == []
    assert admin.get("ma:v1:result:r3") is not None
    admin.close()


@pytest.mark.parametrize("command", DENIED_TO_APP, ids=lambda c: " ".join(c[:2]))
def test_acl_dryrun_refuses_the_app_user_admin_commands(
    acl_redis: int, command: tuple[str, ...]
) -> None:
    """What ``invoke verify`` asks (DEBUG and MODULE may also be off server-wide: DRYRUN
    answers for the ACL alone)."""
    admin = _admin(acl_redis)
    answer = admin.execute_command("ACL", "DRYRUN", APP_USER, *command)
    admin.close()
    assert b"no permissions" in answer


@pytest.mark.parametrize(
    "command", [("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "requirepass"), ("KEYS", "*")]
)
def test_the_app_user_is_refused_when_it_tries(acl_redis: int, command: tuple[str, ...]) -> None:
    app = redis.Redis.from_url(_app_url(acl_redis))
    with pytest.raises(NoPermissionError):
        app.execute_command(*command)
    app.close()


def test_the_app_user_is_confined_to_its_prefix_and_default_is_off(acl_redis: int) -> None:
    app = redis.Redis.from_url(_app_url(acl_redis))
    with pytest.raises(NoPermissionError):
        app.get("other:key")
    assert app.set("ma:v1:probe", b"1", px=1000)
    app.close()
    anonymous = redis.Redis(port=acl_redis)
    with pytest.raises(RedisError, match=r"NOAUTH|authenticated"):
        anonymous.ping()
    anonymous.close()
    as_default = redis.Redis(port=acl_redis, username="default", password="anything")
    with pytest.raises(RedisError, match=r"WRONGPASS|invalid|disabled"):
        as_default.ping()
    as_default.close()
