"""The drill's embedded stacks, driven through invoke like an operator, and what it reads back
from them: live file rows, the files of a storage root, the backup sets of a directory."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from app_patch.db import libpq_url
from app_patch.settings import PROJECT_ROOT
from infra.engines import EngineKind, StackEndpoints
from infra.engines.embedded import EmbeddedEngine
from infra.engines.record import StackRecord
from infra.loopback import free_port
from tests.integration.task_runs import SCRUBBED

LIVE_FILES = (
    "SELECT storage_key, sha256 FROM media_files WHERE deleted_at IS NULL"
    " UNION ALL SELECT storage_key, sha256 FROM artifacts WHERE deleted_at IS NULL"
)


@dataclass
class EmbeddedStack:
    """One embedded stack of the drill, driven through invoke like an operator."""

    base: Path
    port: int = field(default_factory=free_port)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        env.update(
            MA_INFRA_STATE_FILE=str(self.base / "state" / "infra-stack.json"),
            MA_DATA_DIR=str(self.base / "data"),
            MA_STORAGE_ROOT=str(self.storage),
            COLUMNS="160",
        )
        return env

    @property
    def storage(self) -> Path:
        return self.base / "storage"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def invoke(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str) -> str:
        done = self.invoke(*args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def up(self) -> None:
        self.ok("up", "--engine", "embedded", "--port", str(self.port), "--no-verify")

    def down(self) -> None:
        self.invoke("down", timeout=120)

    def endpoints(self) -> StackEndpoints:
        found = StackRecord(EngineKind.EMBEDDED, extra={"data_dir": str(self.base / "data")})
        return EmbeddedEngine().attach(found)


def live_files(owner_url: str) -> dict[str, str]:
    with psycopg.connect(libpq_url(owner_url)) as conn:
        return {str(k): str(s) for k, s in conn.execute(LIVE_FILES).fetchall()}


def store_files(root: Path) -> dict[str, str]:
    """sha256 of every file under uploads/ and artifacts/ of a storage root, by key."""
    found = {}
    for area in ("uploads", "artifacts"):
        for path in sorted((root / area).rglob("*")):
            if path.is_file():
                found[path.relative_to(root).as_posix()] = hashlib.sha256(
                    path.read_bytes()
                ).hexdigest()
    return found


def upload(client: httpx.Client, body: bytes, name: str, ctype: str) -> str:
    answer = client.post("/analyses", files={"file": (name, body, ctype)},
                         data={"analysis_type": "auto"})  # fmt: skip
    assert answer.status_code in (200, 201), answer.text
    return str(answer.json()["id"])


def backup_sets(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith("ma-backup"))


@dataclass
class Drill:
    source: EmbeddedStack
    target: EmbeddedStack
    backups: Path
    expected_rows: dict[str, tuple[int, str | None]]
    expected_files: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
