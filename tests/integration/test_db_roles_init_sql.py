"""``init_sql``, the script an operator runs through psql, draws the same boundary as
``ensure_roles``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from app_patch import migrate as migrations
from app_patch.db import libpq_url
from app_patch.db_roles import init_sql, role_problems, role_url
from tests.conftest import DatabaseFactory, database_name
from tests.integration.db_roles_support import refused

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------- init_sql


def _psql() -> str | None:
    import pgserver

    bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"
    return str(bundled) if bundled.exists() else shutil.which("psql")


def test_init_sql_through_psql_gives_the_same_boundary(databases: DatabaseFactory) -> None:
    psql = _psql()
    if psql is None:
        pytest.skip("no psql binary")
    admin = databases.create("initsql", with_roles=False)
    name = database_name(admin)
    owner, app = "ma_init_owner", "ma_init_app"
    script = init_sql(name, owner, app)
    assert "o-secret" not in script and ":'owner_password'" in script
    args = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", libpq_url(admin), "-f", "-"]
    for _ in range(2):  # idempotent
        proc = subprocess.run(
            [*args, "-v", "owner_password=o-secret", "-v", "app_password=a-secret"],
            input=script,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(args, input=script, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, "passwords are optional: " + proc.stderr

    owner_url, app_url = role_url(admin, owner), role_url(admin, app)
    migrations.upgrade(owner_url)  # tables created after the grants: default privileges
    assert role_problems(app_url) == []
    refused(app_url, "DROP TABLE analysis_jobs")
    with psycopg.connect(libpq_url(app_url)) as conn:
        conn.execute(
            "INSERT INTO retention_events (object_type, object_id, policy, reason)"
            " VALUES ('media', 'x', 'expired', 'init_sql')"
        )
    with psycopg.connect(libpq_url(admin)) as conn:
        stored = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (app,)
        ).fetchone()
    assert stored is not None and str(stored[0]).startswith("SCRAM-SHA-256$")
