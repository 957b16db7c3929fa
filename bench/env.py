"""The benchmark's own servers and scratch space, and the facts about this machine.

By default everything lives under one temp dir: an embedded PostgreSQL (pgserver, Unix socket
only) and a ``redis-server`` on a free loopback port. ``.data/`` is never touched. With
``MA_DB_URL`` set, the same server is used, but every benchmark gets a scratch database
(``ma_bench_<hex>``) that is dropped at the end; with ``MA_REDIS_URL`` set, that Redis is used
and the benchmark deletes the keys it wrote.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import redis
from psycopg import sql
from sqlalchemy.engine import make_url

from app_patch import migrate as migrations
from app_patch.db import libpq_url, normalize_url
from app_patch.embedded import EmbeddedPostgres, EmbeddedRedis
from app_patch.settings import (
    PROJECT_ROOT,
    DatabaseSettings,
    RedisSettings,
    Settings,
    StorageSettings,
)
from infra.loopback import free_port

DB_PREFIX = "ma_bench_"


@dataclass(frozen=True)
class PgTarget:
    """How a libpq client (pgbench, psql) reaches one database: host or socket dir, port..."""

    host: str
    port: int
    user: str
    password: str | None
    database: str

    @classmethod
    def from_url(cls, url: str) -> PgTarget:
        parsed = make_url(url)
        host = parsed.host or str(parsed.query.get("host") or "/tmp")
        return cls(
            host=host,
            port=int(parsed.port or 5432),
            user=parsed.username or "postgres",
            password=parsed.password if isinstance(parsed.password, str) else None,
            database=str(parsed.database),
        )

    def args(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user]

    def env(self) -> dict[str, str]:
        env = {**os.environ, "PGAPPNAME": "ma-bench"}
        if self.password:
            env["PGPASSWORD"] = self.password
        return env


@dataclass(frozen=True)
class RedisTarget:
    host: str
    port: int
    password: str | None
    db: int

    @classmethod
    def from_url(cls, url: str) -> RedisTarget:
        parts = urlsplit(url)
        path = parts.path.lstrip("/")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            password=unquote(parts.password) if parts.password else None,
            db=int(path) if path.isdigit() else 0,
        )

    def cli_args(self) -> list[str]:
        args = ["-h", self.host, "-p", str(self.port), "--dbnum", str(self.db)]
        if self.password:
            args += ["-a", self.password]
        return args


@dataclass
class BenchEnv:
    """Servers and scratch space for one run; build with :func:`bench_env`."""

    root: Path
    admin_url: str  # psycopg-dialect SQLAlchemy URL of a database we may CREATE DATABASE from
    redis_url: str
    embedded_pg: bool
    embedded_redis: bool
    created_dbs: list[str] = field(default_factory=list)

    def scratch_dir(self, name: str) -> Path:
        path = self.root / f"{name}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path

    # ---- databases

    def create_database(self, tag: str, *, migrate: bool = True) -> str:
        """A new empty database on the server (at head unless ``migrate=False``)."""
        name = f"{DB_PREFIX}{tag}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(libpq_url(self.admin_url), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created_dbs.append(name)
        url = normalize_url(self.admin_url).set(database=name).render_as_string(hide_password=False)
        if migrate:
            migrations.upgrade(url)
        return url

    def drop_database(self, url: str) -> None:
        name = str(make_url(url).database)
        with psycopg.connect(libpq_url(self.admin_url), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        if name in self.created_dbs:
            self.created_dbs.remove(name)

    def drop_all(self) -> None:
        for name in list(self.created_dbs):
            with contextlib.suppress(psycopg.Error):
                admin = normalize_url(self.admin_url)
                self.drop_database(admin.set(database=name).render_as_string(hide_password=False))

    # ---- settings

    def settings(self, db_url: str, storage_root: Path | None = None, **db: Any) -> Settings:
        """App settings for ``db_url`` and our Redis; defaults everywhere else."""
        return Settings(
            data_dir=self.root / "data",
            db=DatabaseSettings(url=db_url, **db),
            redis=RedisSettings(url=self.redis_url),
            storage=StorageSettings(root=storage_root or (self.root / "storage")),
        )

    @property
    def pg_target_admin(self) -> PgTarget:
        return PgTarget.from_url(self.admin_url)

    @property
    def redis_target(self) -> RedisTarget:
        return RedisTarget.from_url(self.redis_url)

    def describe(self) -> dict[str, str]:
        pg = "embedded pgserver (temp dir, Unix socket)" if self.embedded_pg else "MA_DB_URL"
        rd = "embedded redis-server (temp dir, loopback)" if self.embedded_redis else "MA_REDIS_URL"
        return {"postgresql": pg, "redis": rd}


@contextlib.contextmanager
def bench_env(keep: bool = False) -> Iterator[BenchEnv]:
    """Start (or attach to) the servers; stop and clean everything on exit."""
    root = Path(tempfile.mkdtemp(prefix="ma-bench-"))
    pg_server: EmbeddedPostgres | None = None
    redis_server: EmbeddedRedis | None = None
    try:
        external_db = os.environ.get("MA_DB_URL") or None
        if external_db:
            admin_url = normalize_url(external_db).render_as_string(hide_password=False)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pg_server = EmbeddedPostgres(root / "pg", database="postgres", persistent=False)
                admin_url = pg_server.start()
        external_redis = os.environ.get("MA_REDIS_URL") or None
        if external_redis:
            redis_url = external_redis
        else:
            redis_server = EmbeddedRedis(root / "redis", port=free_port())
            redis_url = redis_server.start()
        env = BenchEnv(
            root=root,
            admin_url=admin_url,
            redis_url=redis_url,
            embedded_pg=pg_server is not None,
            embedded_redis=redis_server is not None,
        )
        try:
            yield env
        finally:
            env.drop_all()
    finally:
        if redis_server is not None:
            redis_server.stop()
        if pg_server is not None:
            with contextlib.suppress(Exception):
                pg_server.close()  # not persistent: the last handle stops the server
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- machine facts


def cpu_model(cpuinfo: str) -> str:
    """The first ``model name`` of /proc/cpuinfo text (other architectures: ``Model``)."""
    for key in ("model name", "Model", "cpu model", "Processor"):
        match = re.search(rf"^{re.escape(key)}\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return "unknown"


def memory_gib(meminfo: str) -> float | None:
    match = re.search(r"^MemTotal:\s+(\d+)\s+kB", meminfo, re.MULTILINE)
    return round(int(match.group(1)) / 1024 / 1024, 1) if match else None


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def filesystem_of(path: Path) -> str:
    """Filesystem type of ``path`` from /proc/mounts (longest matching mount point)."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1]
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, kind = mount, parts[2]
    return kind


def machine_facts(env: BenchEnv | None) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(_read("/proc/cpuinfo")),
        "memory_gib": memory_gib(_read("/proc/meminfo")),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "executable": sys.executable,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--", "app_patch", "api", "migrations")),
    }
    if env is not None:
        facts["scratch_filesystem"] = filesystem_of(env.root)
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(libpq_url(env.admin_url), autocommit=True) as conn,
        ):
            row = conn.execute("SHOW server_version").fetchone()
            facts["postgresql"] = str(row[0]) if row else "?"
            for setting in ("synchronous_commit", "fsync", "shared_buffers", "max_connections"):
                row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(setting))).fetchone()
                facts[f"pg_{setting}"] = str(row[0]) if row else "?"
        with contextlib.suppress(redis.RedisError):
            client = redis.Redis.from_url(env.redis_url, socket_timeout=2)
            try:
                info = client.info("server")
                facts["redis"] = str(info.get("redis_version", "?"))
            finally:
                client.close()
    return facts
