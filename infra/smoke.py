"""Smoke checks of a running stack, whatever engine started it.

Database at head with every table and index of the models present (read from pg_catalog),
the API's database role unprivileged (``app_patch.db_roles.role_problems``), Redis answering a
round trip as the API's user, the storage writable, and the API ready. Each check reports;
none aborts the others (shown with ``infra.verify.report``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import psycopg
import redis
from sqlalchemy import PrimaryKeyConstraint, UniqueConstraint

from app_patch import migrate as migrations
from app_patch.cache import PREFIX as CACHE_PREFIX
from app_patch.db import libpq_conninfo, normalize_url
from app_patch.db_roles import role_problems
from app_patch.models import Base
from infra.verify import CheckFailed, CheckResult, run_check

TTL_PROBE_MS = 5000


@dataclass(frozen=True)
class SmokeTarget:
    database_url: str
    redis_url: str | None
    api_url: str | None
    storage_root: Path | None  # local root (embedded engine); containers check it via the API
    app_database_url: str | None = None  # the API's role, when checked from here


def expected_schema() -> tuple[set[str], set[str]]:
    """Tables and the indexes the models declare (primary keys and unique constraints too:
    PostgreSQL backs each with an index of the same name)."""
    tables = set(Base.metadata.tables)
    indexes: set[str] = set()
    for table in Base.metadata.tables.values():
        indexes |= {str(index.name) for index in table.indexes}
        indexes |= {
            str(c.name)
            for c in table.constraints
            if c.name and isinstance(c, PrimaryKeyConstraint | UniqueConstraint)
        }
    return tables, indexes


def check_at_head(url: str) -> str:
    state = migrations.status(url)
    if not state.at_head:
        raise CheckFailed(f"at {state.current or 'base'}, head is {state.head}; run invoke migrate")
    return f"revision {state.current}"


def check_schema(url: str) -> str:
    tables, indexes = expected_schema()
    with psycopg.connect(libpq_conninfo(url), connect_timeout=5) as conn:
        found_tables = {
            row[0]
            for row in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r'"
            )
        }
        found_indexes = {
            row[0]
            for row in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'i'"
            )
        }
    missing = sorted((tables - found_tables) | (indexes - found_indexes))
    if missing:
        raise CheckFailed(f"missing: {', '.join(missing)}")
    return f"{len(tables)} tables, {len(indexes)} indexes and keys"


def check_redis(url: str) -> str:
    """PING, SET with a TTL and GET, with only the commands the API's user may run (no PTTL,
    no DEL: the probe key expires by itself, which the ``PX`` proves was accepted)."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    key = f"{CACHE_PREFIX}:smoke:{uuid.uuid4().hex}"
    try:
        client.ping()
        stored = client.set(key, b"ok", px=TTL_PROBE_MS)
        value = client.get(key)
    finally:
        client.close()
    if not stored or value != b"ok":
        raise CheckFailed(f"round trip gave {value!r} (SET answered {stored!r})")
    return f"PING ok, SET PX {TTL_PROBE_MS} / GET round trip under {CACHE_PREFIX}:*"


def check_app_role(url: str) -> str:
    """The API's database role may read and write rows and nothing more."""
    problems = role_problems(url)
    if problems:
        raise CheckFailed("; ".join(problems))
    user = normalize_url(url).username
    return f"role {user}: not a superuser, cannot CREATE or DROP tables, DML on every table"


def check_storage(root: Path) -> str:
    probe = root / "tmp" / f"smoke-{uuid.uuid4().hex}"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b"ok")
    probe.unlink()
    return f"{root} writable"


def check_api_ready(api_url: str, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(base_url=api_url, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get("/health/ready")
                body = response.json()
                if response.status_code == 200 and body.get("status") == "ok":
                    return f"ready: {body['checks']}"
                last = f"HTTP {response.status_code}: {body}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
    raise CheckFailed(f"not ready after {timeout_s:.0f}s ({last})")


def run_smoke(target: SmokeTarget) -> list[CheckResult]:
    checks: list[tuple[str, Callable[[], str]]] = [
        ("database at the head revision", partial(check_at_head, target.database_url)),
        ("every table and index present (pg_catalog)", partial(check_schema, target.database_url)),
    ]
    if target.app_database_url is not None:
        checks.append(
            ("API's database role unprivileged", partial(check_app_role, target.app_database_url))
        )
    if target.redis_url is not None:
        checks.append(
            ("Redis round trip as the API's user", partial(check_redis, target.redis_url))
        )
    if target.storage_root is not None:
        checks.append(("storage writable", partial(check_storage, target.storage_root)))
    if target.api_url is not None:
        checks.append(("API ready (/health/ready)", partial(check_api_ready, target.api_url)))
    return [run_check(name, check) for name, check in checks]
