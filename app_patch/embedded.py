"""Embedded servers for a machine with nothing configured.

PostgreSQL comes from ``pgserver`` (a PostgreSQL 16 build shipped on PyPI, Unix socket only);
Redis from a local ``redis-server`` binary when one is installed. Both keep their data under
``.data/`` and keep running after the starting process exits, until ``stop()``/``invoke down``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

EMBEDDED_DB_NAME = "media_analysis"


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started or stopped."""


logging.getLogger("pgserver").setLevel(logging.WARNING)  # its INFO lines narrate every call


def _import_pgserver() -> Any:
    """pgserver (heavy; only needed when embedding), without platformdirs' XDG warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver

    return pgserver


@dataclass
class EmbeddedPostgres:
    """A pgserver-managed PostgreSQL in ``data_dir``; ``url`` speaks the psycopg dialect."""

    data_dir: Path
    database: str = EMBEDDED_DB_NAME
    persistent: bool = True

    def start(self) -> str:
        pgserver = _import_pgserver()

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        mode = None if self.persistent else "stop"
        try:
            self._server = pgserver.get_server(self.data_dir, cleanup_mode=mode)
            self._server.ensure_postgres_running()
        except Exception as exc:  # pgserver raises bare CalledProcessError/AssertionError
            raise EmbeddedServerError(f"embedded PostgreSQL failed to start: {exc}") from exc
        self._ensure_database()
        return self.url

    @property
    def socket_dir(self) -> str:
        info = self._server.get_postmaster_info()
        return str(info.socket_dir)

    @property
    def libpq_uri(self) -> str:
        return f"postgresql://postgres@/{self.database}?host={self.socket_dir}"

    @property
    def url(self) -> str:
        return socket_url(self.socket_dir, self.database)

    def _ensure_database(self) -> None:
        admin = f"postgresql://postgres@/postgres?host={self.socket_dir}"
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))

    def stop(self) -> None:
        """Fast shutdown; used by ``invoke down`` and by fault-injection tests."""
        pgserver = _import_pgserver()
        if not (self.data_dir / "postmaster.pid").exists():
            return
        pgserver.pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self._server.system_user
        )

    def restart(self) -> None:
        self._server.ensure_postgres_running()

    def close(self) -> None:
        """Release this process's handle; a non-persistent server stops with the last one."""
        self._server.cleanup()


def socket_url(socket_dir: str, database: str) -> str:
    """The bootstrap superuser's URL over the server's Unix socket (trust auth)."""
    return f"postgresql+psycopg://postgres@/{database}?host={socket_dir}"


def start_embedded_postgres(data_dir: Path) -> EmbeddedPostgres:
    server = EmbeddedPostgres(data_dir / "pg")
    server.start()
    return server


@dataclass
class EmbeddedRedis:
    """A ``redis-server`` on loopback with its data and pid file under ``data_dir``."""

    data_dir: Path
    port: int = 6399
    password: str | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid

    def start(self, timeout_s: float = 10.0) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedServerError(
                "redis-server is not installed (apt-get install redis-server)"
            )
        self.data_dir = self.data_dir.resolve()  # redis-server chdirs when it daemonizes
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.pid() is None:
            args = [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--daemonize", "yes",
                "--dir", str(self.data_dir),
                "--pidfile", str(self.pid_file),
                "--logfile", str(self.data_dir / "redis.log"),
                "--save", "",
                "--appendonly", "no",
            ]  # fmt: skip
            if self.password:
                args += ["--requirepass", self.password]
            subprocess.run(args, check=True, capture_output=True, timeout=timeout_s)
        self._wait_ready(timeout_s)
        return self.url

    def _wait_ready(self, timeout_s: float) -> None:
        import redis

        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url, socket_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        raise EmbeddedServerError(f"redis-server on port {self.port} did not answer PING")

    def stop(self, timeout_s: float = 10.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
