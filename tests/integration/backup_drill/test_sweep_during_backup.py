"""A file that retention deletes between the backup's snapshot and its copy is listed in the
set as missing, and the restore marks its row deleted."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from app_patch.db import libpq_url
from tests.integration.backup_drill.stacks import Drill, live_files, store_files
from tests.integration.task_runs import SCRUBBED

pytestmark = pytest.mark.timeout(600)


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
