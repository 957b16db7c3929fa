"""A SIGKILLed backup leaves no set that ``--list`` shows, and ``--keep`` removes its
leftovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app_patch.settings import PROJECT_ROOT
from tests.integration.backup_drill.stacks import Drill, backup_sets, upload

pytestmark = pytest.mark.timeout(600)


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
