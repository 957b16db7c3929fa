"""Alembic on a real PostgreSQL: pytest-alembic's standard checks plus the catalog itself."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic.config import Config
from pytest_alembic.tests import (  # noqa: F401  (collected as tests)
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from app_patch import migrate as migrations
from app_patch.db import libpq_url
from tests.conftest import DatabaseFactory
from tests.integration.task_runs import db_env, run_task

EXPECTED_TABLES = {
    "media_files",
    "analysis_jobs",
    "analysis_results",
    "artifacts",
    "retention_events",
}
EXPECTED_INDEXES = {
    # history by (created_at DESC, id) and (status, created_at); jobs by media file
    "ix_analysis_jobs_created_at_id": "(created_at DESC, id DESC)",
    "ix_analysis_jobs_status_created_at": "(status, created_at DESC)",
    "ix_analysis_jobs_media_file_id": "(media_file_id)",
    # unique sha256 and idempotency key (partial: only when present)
    "uq_media_files_sha256": "UNIQUE",
    "uq_analysis_jobs_idempotency_key": "WHERE (idempotency_key IS NOT NULL)",
    "uq_analysis_results_job_id": "UNIQUE",
    # partial indexes for retention sweeps
    "ix_media_files_expires_at_live": "WHERE (deleted_at IS NULL)",
    "ix_media_files_last_accessed_at_live": "WHERE (deleted_at IS NULL)",
    "ix_artifacts_expires_at_live": "WHERE (deleted_at IS NULL)",
    "ix_artifacts_job_id": "(job_id)",
    "ix_retention_events_occurred_at": "(occurred_at)",
}


@pytest.fixture
def alembic_engine(databases: DatabaseFactory) -> Iterator[Engine]:
    engine = create_engine(databases.create("alembic"))
    yield engine
    engine.dispose()


@pytest.fixture
def alembic_config(alembic_engine: Engine) -> Config:
    return migrations.alembic_config(alembic_engine.url.render_as_string(hide_password=False))


def catalog(url: str) -> tuple[set[str], dict[str, str]]:
    with psycopg.connect(libpq_url(url)) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r'"
            )
        }
        indexes: dict[str, str] = dict(
            conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
        )
    return tables, indexes


def test_invoke_migrate_creates_every_table_and_index(
    databases: DatabaseFactory, project_root: Path
) -> None:
    url = databases.create("catalog")
    proc = run_task("migrate", url=url, cwd=project_root)
    assert proc.returncode == 0, proc.stderr
    assert "migrated base -> 0002" in proc.stdout

    tables, indexes = catalog(url)
    assert tables >= EXPECTED_TABLES
    for name, fragment in EXPECTED_INDEXES.items():
        assert name in indexes, f"missing index {name}"
        assert fragment in indexes[name], f"{name}: {indexes[name]}"
    with psycopg.connect(libpq_url(url)) as conn:
        kinds = {
            row[0]
            for row in conn.execute(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_schema = 'public' AND column_name LIKE '%\\_at'"
            )
        }
    assert kinds == {"timestamp with time zone"}


def test_two_concurrent_migrates_apply_schema_once(
    databases: DatabaseFactory, project_root: Path
) -> None:
    url = databases.create("race")
    env = db_env(url)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "invoke", "migrate"],
            cwd=project_root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    stdout = [out for out, _ in outputs]
    assert sum("migrated base -> 0002" in out for out in stdout) == 1, stdout
    assert sum("already at 0002" in out for out in stdout) == 1, stdout
    with psycopg.connect(libpq_url(url)) as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
