"""Sweepers that die (SIGKILL, or an exit at an exact point) and sweepers that race.

Each case runs ``python -m app_patch.retention`` in real processes against a real PostgreSQL
and filesystem, then checks the end state with ``assert_converged``: exactly the expired
objects are gone, each audited once, and no file lacks a live row or the reverse.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from app_patch.settings import PROJECT_ROOT
from app_patch.storage import upload_key
from tests.integration.test_storage_support import (
    Seeded,
    assert_converged,
    audit_counts,
    child_env,
    files_under,
    query,
    record_store,
    run_child,
    seed,
)

pytestmark = pytest.mark.usefixtures("clean_db")

SWEEP = ["-m", "app_patch.retention"]


def make_orphans(root: Path, count: int) -> list[str]:
    keys = [upload_key(f"{n:064x}") for n in range(1, count + 1)]
    for key in keys:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(b"orphan")
    return keys


def assert_orphans_reaped(url: str, root: Path, orphans: list[str]) -> None:
    audits = audit_counts(url)
    assert {k: audits.get(("orphan_file", k)) for k in orphans} == {k: 1 for k in orphans}
    assert not set(orphans) & files_under(root)


def seeded_world(url: str, root: Path, scale: int = 1) -> tuple[Seeded, list[str]]:
    seeded = seed(
        url,
        root,
        expired_media=1500 * scale,
        live_media=500 * scale,
        expired_artifacts=500 * scale,
        live_artifacts=250 * scale,
    )
    return seeded, make_orphans(root, 200 * scale)


def audit_total(url: str) -> int:
    return int(query(url, "SELECT count(*) FROM retention_events")[0][0])


def test_sigkilled_sweeper_converges_on_rerun(clean_db: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    seeded, orphans = seeded_world(clean_db, root)
    total = len(seeded.expired) + len(orphans)
    env = child_env(clean_db, root, retention_batch_size=50, retention_batch_pause_s=0.02)
    kills = []
    for threshold in (300, 1200, 2000):  # three real SIGKILLs at different depths
        child = subprocess.Popen(
            [sys.executable, *SWEEP],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        for _ in range(100_000):
            done = audit_total(clean_db)
            if done >= threshold or child.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        assert child.returncode == -signal.SIGKILL, "the sweeper was killed, not finished"
        kills.append(audit_total(clean_db))
    assert kills == sorted(kills) and kills[-1] < total, f"killed half way: {kills} of {total}"

    final = run_child(SWEEP, env)
    assert final.returncode == 0, final.stderr
    assert_converged(clean_db, root, seeded)
    assert_orphans_reaped(clean_db, root, orphans)
    [(freed,)] = query(
        clean_db,
        "SELECT sum(bytes_freed) FROM retention_events WHERE object_type <> 'orphan_file'",
    )
    assert freed == seeded.expired_bytes
    assert list((root / "tmp").iterdir()) == []


FAULT = """
import os, sys
from app_patch import retention, storage

point, after = sys.argv[1], int(sys.argv[2])
calls = 0
original = storage.Storage.remove

def remove(self, key):
    global calls
    if point == "before-unlink" and calls >= after:
        os._exit(41)
    removed = original(self, key)
    calls += 1
    if point == "after-unlink" and calls >= after:
        os._exit(42)
    return removed

storage.Storage.remove = remove
sys.exit(retention.main(sys.argv[3:]))
"""


def fault(env: dict[str, str], point: str, after: int, *args: str) -> int:
    proc = run_child(["-c", textwrap.dedent(FAULT), point, str(after), *args], env)
    return proc.returncode


@pytest.mark.parametrize(
    ("point", "after", "code"),
    [
        ("before-unlink", 0, 41),  # rows locked, nothing unlinked yet
        ("after-unlink", 25, 42),  # half a batch unlinked, its mark + audit never committed
        ("after-unlink", 50, 42),  # a whole batch unlinked, commit not reached
    ],
)
def test_crash_inside_a_row_batch_converges(
    clean_db: str, tmp_path: Path, point: str, after: int, code: int
) -> None:
    root = tmp_path / "root"
    seeded = seed(clean_db, root, expired_media=120, live_media=30, expired_artifacts=30)
    env = child_env(clean_db, root, retention_batch_size=50)
    assert fault(env, point, after, "--policy", "uploads") == code
    assert audit_total(clean_db) == 0, "nothing committed by the crashed batch"
    gone = {k for k, _ in seeded.expired.values()} - files_under(root)
    assert len(gone) == after, "the crash hit between unlink and commit"

    final = run_child(SWEEP, env)
    assert final.returncode == 0, final.stderr
    assert_converged(clean_db, root, seeded)
    reasons = [r for (r,) in query(clean_db, "SELECT reason FROM retention_events")]
    assert reasons.count("expired (file was already gone)") == after


def test_crash_between_orphan_audit_and_unlink_audits_once(clean_db: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    orphans = make_orphans(root, 120)  # more than the guard allows with no live rows: lift it
    record_store(clean_db, root)
    env = child_env(clean_db, root, retention_batch_size=50, retention_reconcile_max_fraction=1)
    assert fault(env, "before-unlink", 0, "--policy", "orphans") == 41
    assert audit_total(clean_db) == 50, "the first batch's audit rows were committed"
    assert set(orphans) <= files_under(root), "and none of its files unlinked"

    final = run_child(SWEEP, env)
    assert final.returncode == 0, final.stderr
    assert_orphans_reaped(clean_db, root, orphans)
    assert audit_total(clean_db) == 120


def test_two_sweepers_never_delete_or_audit_twice(clean_db: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    seeded, orphans = seeded_world(clean_db, root, scale=2)
    # some live rows whose files vanished: both sweepers will want to mark them
    missing = list(seeded.live_media)[:40]
    for row_id in missing:
        (root / seeded.live_media.pop(row_id)[0]).unlink()
    env = child_env(clean_db, root, retention_batch_size=50, retention_batch_pause_s=0.01)
    children = [
        subprocess.Popen(
            [sys.executable, *SWEEP],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    reports = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        reports.append(json.loads(out))

    both = [r["policies"] for r in reports]
    assert all(p["uploads"]["objects"] > 0 for p in both), "the two really ran side by side"
    assert sum(p["uploads"]["objects"] + p["artifacts"]["objects"] for p in both) == len(
        seeded.expired
    )
    assert sum(p["orphans"]["objects"] for p in both) == len(orphans)
    assert sum(p["missing"]["objects"] for p in both) == len(missing)
    audits = audit_counts(clean_db)
    assert set(audits.values()) == {1}, "every object audited exactly once"
    seeded.expired_media.update({i: ("", 0) for i in missing})  # marked deleted, file gone
    assert_converged(clean_db, root, seeded)
    assert_orphans_reaped(clean_db, root, orphans)
