"""A backup restores every row and byte into a fresh stack; tampered sets are refused in one
line before anything changes; a second restore needs ``--force``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import httpx
import pytest

from tests.db_fingerprint import fingerprint
from tests.integration.api.harness import unique_text
from tests.integration.backup_drill.stacks import Drill, backup_sets, store_files, upload
from tests.integration.task_runs import one_error_line

pytestmark = pytest.mark.timeout(600)


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
