"""``invoke retention``: dry run changes nothing, summary table, one-line errors."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from infra.loopback import free_port
from tests.integration.test_storage_support import (
    Seeded,
    child_env,
    db_snapshot,
    run_child,
    seed,
    tree,
)
from tests.task_output import table_rows

pytestmark = pytest.mark.usefixtures("clean_db")

INVOKE = ["-m", "invoke", "retention"]


def world(url: str, root: Path) -> Seeded:
    """Expired and live rows, a row whose file is gone, an orphan and an old tmp leftover."""
    seeded = seed(url, root, expired_media=30, live_media=10, expired_artifacts=5, live_artifacts=5)
    (root / next(iter(seeded.live_media.values()))[0]).unlink()
    orphan = root / "uploads/ee/ee" / ("ee" * 32)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"orphan")
    (root / "tmp").mkdir(exist_ok=True)
    leftover = root / "tmp" / "ma-0123456789abcdef0123456789abcdef.part"
    leftover.write_bytes(b"half")
    old = time.time() - 3 * 86400
    os.utime(leftover, (old, old))
    return seeded


def test_dry_run_changes_nothing(clean_db: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    seeded = world(clean_db, root)
    env = child_env(clean_db, root, retention_quota_bytes=1)
    files_before, rows_before = tree(root), db_snapshot(clean_db)

    proc = run_child([*INVOKE, "--dry-run"], env)

    assert proc.returncode == 0, proc.stderr
    assert tree(root) == files_before, "nothing on disk changed (not even tmp/)"
    assert db_snapshot(clean_db) == rows_before, "nothing in the database changed"
    assert "dry run" in proc.stdout
    rows = table_rows(proc.stdout)
    expired_media = sum(size for _, size in seeded.expired_media.values())
    assert rows["uploads"] == (30, expired_media)
    assert rows["artifacts"][0] == 5
    assert rows["missing"] == (1, 0)
    assert rows["orphans"] == (1, 6)
    assert rows["tmp"] == (1, 4)
    assert rows["quota"][0] == 15, "every row still live after expiry would go (quota: 1 byte)"

    real = run_child(INVOKE, child_env(clean_db, root))  # the same, without a quota
    assert real.returncode == 0, real.stderr
    real_rows = table_rows(real.stdout)
    assert real_rows.pop("quota") == (0, 0)
    rows.pop("quota"), rows.pop("total"), real_rows.pop("total")
    assert real_rows == rows, "the real run deletes what the dry run announced"
    assert "retention: deleted" in real.stdout


@pytest.mark.parametrize(
    ("args", "settings", "expected"),
    [
        (["--policy", "bogus"], {}, "unknown retention policy 'bogus'; choose from: uploads"),
        (["--policy", "uploads,nope"], {}, "unknown retention policy 'nope'"),
        ([], {"storage_root": "/proc/version/storage"}, "storage unavailable"),
        ([], {"db_url": f"postgresql+psycopg://u:pw@127.0.0.1:{free_port()}/x"}, "database"),
    ],
)
def test_bad_input_gives_one_line(
    clean_db: str, tmp_path: Path, args: list[str], settings: dict[str, str], expected: str
) -> None:
    proc = run_child([*INVOKE, *args], child_env(clean_db, tmp_path / "root", **settings))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
