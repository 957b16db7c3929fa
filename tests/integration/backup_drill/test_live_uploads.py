"""A backup taken while uploads go on restores with no live row without its file."""

from __future__ import annotations

import json
import shutil
import threading
import time

import httpx
import pytest

from tests.db_fingerprint import fingerprint
from tests.integration.api.harness import png_bytes, unique_text
from tests.integration.backup_drill.stacks import (
    Drill,
    backup_sets,
    live_files,
    store_files,
    upload,
)

pytestmark = pytest.mark.timeout(600)


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
