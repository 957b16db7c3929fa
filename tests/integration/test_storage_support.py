"""Helpers shared by the storage and retention tests (no tests here).

Seeding writes rows with COPY and files directly, so 20k objects take a couple of seconds.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from app_patch.db import libpq_url
from app_patch.metrics import SWEEP_STATUS_NAME
from app_patch.models import ALL_TABLES
from app_patch.settings import PROJECT_ROOT, RetentionSettings, StorageSettings
from app_patch.storage import artifact_key, upload_key
from app_patch.store_identity import MARKER_NAME, ensure_marker


def storage_settings(root: Path, **overrides: object) -> StorageSettings:
    return StorageSettings(root=root, **overrides)  # type: ignore[arg-type]


def retention_settings(**overrides: object) -> RetentionSettings:
    values: dict[str, object] = {"orphan_grace_s": 0, "batch_size": 500}
    values.update(overrides)
    return RetentionSettings(**values)  # type: ignore[arg-type]


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def tree(path: Path) -> dict[str, tuple[str, int, int, int]]:
    """Every entry under ``path``: kind, size, mtime_ns, inode (symlinks not followed)."""
    found: dict[str, tuple[str, int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            kind = "link" if full.is_symlink() else "dir" if full.is_dir() else "file"
            found[str(full.relative_to(path))] = (kind, st.st_size, st.st_mtime_ns, st.st_ino)
    return found


def files_under(root: Path) -> set[str]:
    """Stored files (the root's identity marker and the last sweep's outcome are not)."""
    meta = {MARKER_NAME, SWEEP_STATUS_NAME}
    return {k for k, v in tree(root).items() if v[0] == "file" and k not in meta}


def db_snapshot(url: str) -> dict[str, list[tuple[object, ...]]]:
    with psycopg.connect(libpq_url(url)) as conn:
        return {
            t.name: conn.execute(f'SELECT * FROM "{t.name}" ORDER BY 1').fetchall()
            for t in ALL_TABLES
        }


def query(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_url(url)) as conn:
        return conn.execute(sql, params or None).fetchall()


def execute(url: str, sql: str, *params: object) -> None:
    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute(sql, params or None)


def child_env(url: str, root: Path, **settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MA_") and k != "DATABASE_URL"}
    env.update(MA_DB_URL=url, MA_STORAGE_ROOT=str(root), MA_RETENTION_ORPHAN_GRACE_S="0")
    env.update({f"MA_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def run_child(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Seeded:
    """What ``seed`` created: ids and keys by state, plus byte totals."""

    expired_media: dict[uuid.UUID, tuple[str, int]] = field(default_factory=dict)
    live_media: dict[uuid.UUID, tuple[str, int]] = field(default_factory=dict)
    expired_artifacts: dict[uuid.UUID, tuple[str, int]] = field(default_factory=dict)
    live_artifacts: dict[uuid.UUID, tuple[str, int]] = field(default_factory=dict)
    job_ids: list[uuid.UUID] = field(default_factory=list)

    @property
    def expired(self) -> dict[uuid.UUID, tuple[str, int]]:
        return {**self.expired_media, **self.expired_artifacts}

    @property
    def live(self) -> dict[uuid.UUID, tuple[str, int]]:
        return {**self.live_media, **self.live_artifacts}

    @property
    def expired_bytes(self) -> int:
        return sum(size for _, size in self.expired.values())


def _write(root: Path, key: str, data: bytes, made: set[Path]) -> None:
    path = root / key
    if path.parent not in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        made.add(path.parent)
    path.write_bytes(data)


def seed(
    url: str,
    root: Path,
    *,
    expired_media: int,
    live_media: int,
    expired_artifacts: int = 0,
    live_artifacts: int = 0,
    jobs: int = 20,
    tag: str = "",
) -> Seeded:
    """Rows (COPY) and their files; expired rows expired a day ago, live ones in 30 days."""
    now = datetime.now(UTC)
    out = Seeded(job_ids=[uuid.uuid4() for _ in range(jobs)])
    made: set[Path] = set()
    media_rows: list[tuple[object, ...]] = []
    artifact_rows: list[tuple[object, ...]] = []
    for n, (expired, target) in enumerate(
        [(True, out.expired_media)] * expired_media + [(False, out.live_media)] * live_media
    ):
        data = f"media {tag} {n} ".encode() * (1 + n % 7)
        # a valid, unique digest in one of 16 fan-out folders: creating ~10k folders
        # would dominate the seeding time on a slow disk
        sha = f"{n % 16:02x}{n % 16:02x}" + hashlib.sha256(data).hexdigest()[4:]
        key = upload_key(sha)
        _write(root, key, data, made)
        row_id = uuid.uuid4()
        target[row_id] = (key, len(data))
        expires = now - timedelta(days=1) if expired else now + timedelta(days=30)
        accessed = now - timedelta(days=31) if expired else now
        media_rows.append(
            (row_id, sha, len(data), "application/octet-stream", key, accessed, expires)
        )
    day = date.today()
    for n, (expired, target) in enumerate(
        [(True, out.expired_artifacts)] * expired_artifacts
        + [(False, out.live_artifacts)] * live_artifacts
    ):
        data = f"artifact {tag} {n} ".encode() * (1 + n % 5)
        job = out.job_ids[n % jobs]
        key = artifact_key(job, f"k{n}{tag}", "bin", day)
        _write(root, key, data, made)
        row_id = uuid.uuid4()
        target[row_id] = (key, len(data))
        expires = now - timedelta(days=1) if expired else now + timedelta(days=30)
        sha = hashlib.sha256(data).hexdigest()
        artifact_rows.append((row_id, job, f"k{n}", key, len(data), sha, "text/plain", expires))
    with psycopg.connect(libpq_url(url)) as conn:
        with conn.cursor().copy("COPY analysis_jobs (id, analysis_type, status) FROM STDIN") as cp:
            for job in out.job_ids:
                cp.write_row((job, "basic", "succeeded"))
        with conn.cursor().copy(
            "COPY analysis_results (id, job_id, result, engine_name, engine_version, duration_ms)"
            " FROM STDIN"
        ) as cp:
            for job in out.job_ids:
                cp.write_row((uuid.uuid4(), job, '{"ok": true}', "basic", "1", 1.0))
        with conn.cursor().copy(
            "COPY media_files (id, sha256, size_bytes, content_type, storage_key,"
            " last_accessed_at, expires_at) FROM STDIN"
        ) as cp:
            for row in media_rows:
                cp.write_row(row)
        with conn.cursor().copy(
            "COPY artifacts (id, job_id, kind, storage_key, size_bytes, sha256, content_type,"
            " expires_at) FROM STDIN"
        ) as cp:
            for row in artifact_rows:
                cp.write_row(row)
    record_store(url, root)
    return out


def record_store(url: str, root: Path) -> None:
    """What the API does on its first write: the root gets a marker, the database records it."""
    root.mkdir(parents=True, exist_ok=True)
    store_id = ensure_marker(root)
    execute(
        url, "INSERT INTO store_identity (store_id) VALUES (%s) ON CONFLICT DO NOTHING", store_id
    )


def audit_counts(url: str) -> dict[tuple[str, str], int]:
    rows = query(url, "SELECT object_type, object_id, count(*) FROM retention_events GROUP BY 1, 2")
    return {(str(t), str(i)): int(n) for t, i, n in rows}


def deleted_ids(url: str) -> set[uuid.UUID]:
    rows = query(
        url,
        "SELECT id FROM media_files WHERE deleted_at IS NOT NULL"
        " UNION ALL SELECT id FROM artifacts WHERE deleted_at IS NOT NULL",
    )
    return {r[0] for r in rows}


def assert_converged(url: str, root: Path, seeded: Seeded) -> None:
    """Exactly the expired objects are gone (rows marked, files removed, one audit each);
    every live object keeps its file; no file lacks a live row and no live row lacks a file."""
    assert deleted_ids(url) == set(seeded.expired)
    audits = audit_counts(url)
    row_audits = {
        uuid.UUID(i): n for (t, i), n in audits.items() if t in {"media_file", "artifact"}
    }
    assert row_audits == {i: 1 for i in seeded.expired}, "one audit row per deleted object"
    on_disk = files_under(root)
    assert not {key for key, _ in seeded.expired.values()} & on_disk
    live_keys = {key for key, _ in seeded.live.values()}
    stray = {f for f in on_disk - live_keys if not f.startswith(("tmp/", "outbox/"))}
    assert stray == set(), "files without a live row"
    assert live_keys <= on_disk, "live rows without a file"
    assert int(query(url, "SELECT count(*) FROM analysis_jobs")[0][0]) == len(seeded.job_ids)
