"""Backup and restore drill on the embedded engine (real pgserver PostgreSQL, redis-server,
local API, files; no Docker), through ``invoke backup`` / ``invoke restore`` as an operator
runs them.

A source stack gets real uploads of mixed types (PNG, JPEG, WAV, text) and artifacts; a
backup of it restores into a fresh stack in another data dir with every job, result, media
and artifact row equal (row counts and md5 of the ordered rows) and every file
byte-identical. Sets with an altered file, a missing file or a truncated dump are refused in
one line before anything changes; a backup taken while uploads go on restores with no live
row without its file; a SIGKILLed backup leaves no set that ``--list`` shows, and ``--keep``
removes its leftovers.

Each stack has its own record, data dir and storage root (``MA_INFRA_STATE_FILE``,
``MA_DATA_DIR``, ``MA_STORAGE_ROOT``), so the checkout's ``.data`` is never touched. The two
stacks never run at once: the embedded Redis port is fixed.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
from PIL import Image

from app_patch.db import create_engine, create_session_factory, libpq_url
from app_patch.media import MediaStore
from app_patch.settings import PROJECT_ROOT, DatabaseSettings, RetentionSettings, StorageSettings
from app_patch.storage import Storage
from infra.engines import EngineKind, StackEndpoints
from infra.engines.embedded import EmbeddedEngine
from infra.engines.record import StackRecord
from infra.loopback import free_port
from tests.db_fingerprint import fingerprint
from tests.integration.api.harness import png_bytes, unique_text, wav_bytes
from tests.integration.task_runs import SCRUBBED, one_error_line

pytestmark = pytest.mark.timeout(600)

LIVE_FILES = (
    "SELECT storage_key, sha256 FROM media_files WHERE deleted_at IS NULL"
    " UNION ALL SELECT storage_key, sha256 FROM artifacts WHERE deleted_at IS NULL"
)


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40 + seed, 30), (seed * 40 % 256, 90, 160)).save(buffer, format="JPEG")
    return buffer.getvalue()


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


async def _artifacts(app_url: str, root: Path, jobs: list[str]) -> None:
    engine = create_engine(DatabaseSettings(pool_size=2, max_overflow=0), app_url)
    try:
        store = MediaStore(
            create_session_factory(engine), Storage(StorageSettings(root=root)), RetentionSettings()
        )

        async def chunks(body: bytes) -> AsyncIterator[bytes]:
            yield body

        for i, job in enumerate(jobs):
            report = f"report of {job} #{i}\n".encode() * 50
            await store.store_artifact(
                uuid.UUID(job), "report", "txt", chunks(report), "text/plain"
            )
    finally:
        await engine.dispose()


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


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    base = tmp_path_factory.mktemp("backup-drill")
    source = EmbeddedStack(base / "source")
    target = EmbeddedStack(base / "target")
    backups = base / "backups"
    source.up()
    try:
        jobs: list[str] = []
        with httpx.Client(base_url=source.api, timeout=60, trust_env=False) as client:
            for i in range(6):
                jobs.append(upload(client, png_bytes(seed=i + 1), f"p{i}.png", "image/png"))
                jobs.append(upload(client, _jpeg(i), f"j{i}.jpg", "image/jpeg"))
                jobs.append(upload(client, wav_bytes(0.2 + i / 10), f"w{i}.wav", "audio/wav"))
                jobs.append(upload(client, unique_text(f"t{i}"), f"t{i}.txt", "text/plain"))
            upload(client, png_bytes(seed=1), "again.png", "image/png")  # dedup: same file
        endpoints = source.endpoints()
        assert endpoints.app_database_url is not None
        asyncio.run(_artifacts(endpoints.app_database_url, source.storage, jobs[:5]))
        rows = fingerprint(endpoints.database_url)
        files = live_files(endpoints.database_url)
        assert rows["analysis_jobs"][0] == 25 and rows["media_files"][0] == 24
        assert rows["artifacts"][0] == 5 and len(files) == 29
        yield Drill(source, target, backups, rows, files)
    finally:
        source.down()
        target.down()


def test_backup_restores_every_row_and_byte_into_a_fresh_stack(drill: Drill) -> None:
    started = time.monotonic()
    out = drill.source.ok("backup", "--to", str(drill.backups))
    drill.timings["backup_s"] = time.monotonic() - started
    [made] = backup_sets(drill.backups)
    assert f"backup {made}" in out.replace("\n", "")
    manifest = json.loads((made / "manifest.json").read_text())
    assert manifest["engine"] == "embedded" and manifest["schema_revision"]
    assert len(manifest["files"]) == 29 and manifest["missing"] == []
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == drill.expected_files
    listing = drill.source.ok("backup", "--list", "--to", str(drill.backups))
    assert made.name in listing and " 29 " in listing

    drill.source.down()  # the source's data stays; the target is a fresh stack elsewhere
    drill.target.up()
    before = fingerprint(drill.target.endpoints().database_url)
    assert before["analysis_jobs"][0] == 0

    # Tampered sets are refused in one line before anything changes.
    key = sorted(drill.expected_files)[3]
    for damage, expected in (
        ("altered", f"file {key} is altered"),
        ("missing", f"file {key} is missing"),
        ("truncated", "database.dump is"),
    ):
        bad = drill.backups.parent / f"bad-{damage}" / made.name
        shutil.copytree(made, bad)
        if damage == "altered":
            with (bad / "files" / key).open("r+b") as handle:
                first = handle.read(1)
                handle.seek(0)
                handle.write(bytes([first[0] ^ 0xFF]))
        elif damage == "missing":
            (bad / "files" / key).unlink()
        else:
            dump = bad / "database.dump"
            os.truncate(dump, dump.stat().st_size // 2)
        line = one_error_line(drill.target.invoke("restore", str(bad)))
        assert expected in line, line
        assert fingerprint(drill.target.endpoints().database_url) == before
        assert store_files(drill.target.storage) == {}

    started = time.monotonic()
    out = drill.target.ok("restore", made.name, "--from", str(drill.backups))
    drill.timings["restore_s"] = time.monotonic() - started
    assert "restored" in out
    owner_url = drill.target.endpoints().database_url
    assert fingerprint(owner_url) == drill.expected_rows
    restored_files = store_files(drill.target.storage)
    assert restored_files == drill.expected_files  # every byte (sha256), nothing else

    # The API of the target serves the restored media, and accepts its store.
    with httpx.Client(base_url=drill.target.api, timeout=30, trust_env=False) as client:
        assert client.get("/health/ready").json()["checks"]["storage"] == "ok"
        for key, sha in list(drill.expected_files.items())[:8]:
            if key.startswith("uploads/"):
                body = client.get(f"/media/{sha}/content")
                assert body.status_code == 200 and hashlib.sha256(body.content).hexdigest() == sha
        fresh = upload(client, unique_text("after-restore"), "after.txt", "text/plain")
        assert client.get(f"/analyses/{fresh}").status_code == 200
    # A second restore into the now non-empty stack needs --force.
    line = one_error_line(drill.target.invoke("restore", str(made)))
    assert "not empty" in line and "--force" in line
    print(f"embedded drill timings: {drill.timings}")


def test_backup_during_uploads_restores_no_row_without_its_file(drill: Drill) -> None:
    drill.target.down()
    drill.source.up()
    stop = threading.Event()
    done: list[str] = []
    errors: list[str] = []

    def keep_uploading() -> None:
        with httpx.Client(base_url=drill.source.api, timeout=30, trust_env=False) as client:
            for i in range(400):  # bounded: ~the backup's duration, at most 400 uploads
                if stop.is_set():
                    return
                try:
                    body = png_bytes(seed=1000 + i) if i % 2 else unique_text(f"live{i}")
                    done.append(upload(client, body, f"live{i}", "application/octet-stream"))
                except (AssertionError, httpx.HTTPError) as exc:
                    errors.append(repr(exc))

    uploader = threading.Thread(target=keep_uploading, daemon=True)
    uploader.start()
    try:
        deadline = time.monotonic() + 30
        while len(done) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        out = drill.source.ok("backup", "--to", str(drill.backups))
        during = len(done)
    finally:
        stop.set()
        uploader.join(timeout=60)
    assert not errors, errors[:3]
    newest = backup_sets(drill.backups)[-1]
    assert str(newest) in out.replace("\n", "")
    assert len(done) > during or during > 5  # uploads really went on around the backup

    drill.source.down()
    shutil.rmtree(drill.target.base, ignore_errors=True)  # a fresh target again
    drill.target.up()
    drill.target.ok("restore", str(newest))
    owner_url = drill.target.endpoints().database_url
    rows = live_files(owner_url)
    on_disk = store_files(drill.target.storage)
    assert rows and set(rows) <= set(on_disk), sorted(set(rows) - set(on_disk))[:3]
    for key, sha in rows.items():
        if key.startswith("uploads/"):
            assert on_disk[key] == sha, key
    manifest = json.loads((newest / "manifest.json").read_text())
    assert manifest["rows"]["media_files"] == fingerprint(owner_url)["media_files"][0]
    print(f"backup during {len(done)} uploads: {len(manifest['files'])} files in the set")


def test_a_sigkilled_backup_leaves_no_complete_looking_set(drill: Drill) -> None:
    drill.target.down()
    drill.source.up()
    big = os.urandom(48 << 20)  # three large uploads: the copy takes long enough to kill
    with httpx.Client(base_url=drill.source.api, timeout=120, trust_env=False) as client:
        for i in range(3):
            upload(client, big + bytes([i]), f"big{i}.bin", "application/octet-stream")
    complete_before = backup_sets(drill.backups)
    process = subprocess.Popen(
        [sys.executable, "-m", "invoke", "backup", "--to", str(drill.backups)],
        cwd=PROJECT_ROOT,
        env=drill.source.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    partial: Path | None = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        found = [p for p in drill.backups.glob(".partial-*") if (p / "files").is_dir()]
        if found:
            partial = found[0]
            break
        time.sleep(0.005)
    assert partial is not None, "the backup finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert partial.is_dir()  # left behind, but...
    assert not (partial / "manifest.json").exists()
    assert backup_sets(drill.backups) == complete_before  # ...no new complete-looking set
    listing = drill.source.ok("backup", "--list", "--to", str(drill.backups))
    assert partial.name.removeprefix(".partial-") not in listing

    out = drill.source.ok("backup", "--to", str(drill.backups), "--keep", "2")
    assert f"deleted {partial}" in out.replace("\n", "")
    assert not partial.exists()
    assert len(backup_sets(drill.backups)) == 2
    for old in complete_before[: len(complete_before) + 1 - 2]:
        assert f"deleted {old}" in out.replace("\n", "")


def test_a_file_retention_deletes_during_the_backup_leaves_no_row_without_it(
    drill: Drill, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Retention deletes a live upload after the snapshot, before the files are copied (what
    its sweep does: unlink under the storage-key lock, commit the row deleted). The set lists
    the file as missing; the restore marks that row deleted and audits it."""
    from app_patch.file_locks import key_lock_id
    from app_patch.settings import get_settings
    from infra.backup import stack_site, take_backup
    from infra.backup.local_site import LocalSite
    from infra.backup.progress import Silent
    from infra.in_stack import LocalTarget

    drill.target.down()
    drill.source.up()
    for name, value in drill.source.env.items():
        if name.startswith("MA_"):
            monkeypatch.setenv(name, value)
    for name in SCRUBBED:
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    endpoints = drill.source.endpoints()
    with psycopg.connect(libpq_url(endpoints.database_url)) as conn:
        row = conn.execute(
            "SELECT id::text, storage_key FROM media_files WHERE deleted_at IS NULL"
            " ORDER BY storage_key LIMIT 1"
        ).fetchone()
    assert row is not None
    victim_id, victim_key = str(row[0]), str(row[1])
    assert endpoints.app_database_url is not None
    app_url: str = endpoints.app_database_url

    class RetentionMeanwhile(LocalSite):
        def dump(self, *args: object, **kwargs: object) -> str:
            version = super().dump(*args, **kwargs)  # type: ignore[arg-type]
            with psycopg.connect(libpq_url(app_url)) as sweeper:
                sweeper.execute("SELECT pg_advisory_xact_lock(%s)", (key_lock_id(victim_key),))
                (drill.source.storage / victim_key).unlink()
                sweeper.execute(
                    "UPDATE media_files SET deleted_at = now() WHERE id = %s", (victim_id,)
                )
            return version

    monkeypatch.setitem(
        stack_site.SITES, LocalTarget, lambda place: RetentionMeanwhile(drill.source.storage)
    )
    try:
        result = take_backup(tmp_path / "sets", Silent())
    finally:
        get_settings.cache_clear()
    assert [(m.path, m.table, m.row_id) for m in result.manifest.missing] == [
        (victim_key, "media_files", victim_id)
    ]
    assert victim_key not in {f.path for f in result.manifest.files}

    drill.source.down()
    shutil.rmtree(drill.target.base, ignore_errors=True)
    drill.target.up()
    drill.target.ok("restore", str(result.path))
    owner_url = drill.target.endpoints().database_url
    rows = live_files(owner_url)
    on_disk = store_files(drill.target.storage)
    assert victim_key not in rows and set(rows) <= set(on_disk)
    with psycopg.connect(libpq_url(owner_url)) as conn:
        audit = conn.execute(
            "SELECT object_type, policy FROM retention_events WHERE object_id = %s", (victim_id,)
        ).fetchall()
        jobs = conn.execute(
            "SELECT count(*) FROM analysis_jobs j JOIN media_files m ON m.id = j.media_file_id"
            " WHERE m.id = %s",
            (victim_id,),
        ).fetchone()
    assert audit == [("media_file", "backup")]
    assert jobs is not None and jobs[0] >= 1  # the history of that file is kept
