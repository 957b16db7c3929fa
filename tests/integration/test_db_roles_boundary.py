"""The trust boundary in PostgreSQL: the app role uses rows, only the owner role changes schema,
and ``role_problems`` reports any URL that could do more.

Every test gets its own database on the session's server (roles are cluster-wide, grants are
per database). Refusals are asserted by doing the forbidden thing as the app role and
expecting PostgreSQL's ``insufficient_privilege``, never by reading the catalog alone.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql

from app_patch.db import libpq_url
from app_patch.db_roles import role_problems
from tests.conftest import DatabaseFactory
from tests.integration.db_roles_support import Db, refused, scalar

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------- the app role


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE public.intruder (id integer)",
        "DROP TABLE analysis_jobs",
        "ALTER TABLE analysis_jobs ADD COLUMN intruder integer",
        "ALTER TABLE media_files DROP COLUMN sha256",
        "TRUNCATE analysis_jobs CASCADE",
        "CREATE INDEX intruder ON analysis_jobs (status)",
        "ALTER TYPE job_status ADD VALUE 'intruder'",
        "DROP SEQUENCE retention_events_id_seq",
        "CREATE SCHEMA intruder",
        "CREATE TEMP TABLE intruder (id integer)",
        "DROP TABLE alembic_version",
    ],
)
def test_app_role_cannot_change_the_schema(db: Db, statement: str) -> None:
    message = refused(db.app, statement)
    assert "permission denied" in message or "must be owner" in message, message


def test_app_role_cannot_create_databases_or_roles(db: Db) -> None:
    for statement in ("CREATE ROLE intruder", "ALTER ROLE ma_app SUPERUSER"):
        refused(db.app, statement)
    with (
        psycopg.connect(libpq_url(db.app), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("CREATE DATABASE intruder")


def test_app_role_reads_and_writes_rows(db: Db) -> None:
    job = uuid.uuid4()
    with psycopg.connect(libpq_url(db.app)) as conn:
        conn.execute(
            "INSERT INTO analysis_jobs (id, analysis_type, status) VALUES (%s, 'basic', 'queued')",
            (job,),
        )
        conn.execute("UPDATE analysis_jobs SET status = 'running' WHERE id = %s", (job,))
        with conn.cursor().copy("COPY analysis_jobs (id, analysis_type, status) FROM STDIN") as cp:
            cp.write_row((uuid.uuid4(), "basic", "succeeded"))
        # bigserial id: the app needs USAGE on the sequence behind it
        for n in range(2):
            conn.execute(
                "INSERT INTO retention_events (object_type, object_id, policy, reason)"
                " VALUES ('media', %s, 'expired', 'test')",
                (str(n),),
            )
        assert conn.execute("SELECT count(*) FROM analysis_jobs").fetchone() == (2,)
        conn.execute("DELETE FROM analysis_jobs WHERE id = %s", (job,))
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() is not None
    assert scalar(db.owner, "SELECT count(*) FROM analysis_jobs") == 1
    assert scalar(db.owner, "SELECT count(*) FROM retention_events") == 2


def test_a_later_migrations_table_is_usable_through_default_privileges(db: Db) -> None:
    """As if a new revision ran after ensure_roles: no rerun needed for the app to use it."""
    with psycopg.connect(libpq_url(db.owner)) as conn:
        conn.execute("CREATE TABLE later_table (id bigserial PRIMARY KEY, note text NOT NULL)")
        conn.execute("CREATE SEQUENCE later_counter")
    with psycopg.connect(libpq_url(db.app)) as conn:
        conn.execute("INSERT INTO later_table (note) VALUES ('a'), ('b')")
        conn.execute("UPDATE later_table SET note = 'c' WHERE id = 1")
        conn.execute("DELETE FROM later_table WHERE id = 2")
        assert conn.execute("SELECT id, note FROM later_table").fetchall() == [(1, "c")]
        assert conn.execute("SELECT nextval('later_counter')").fetchone() == (1,)
    refused(db.app, "DROP TABLE later_table")
    refused(db.app, "TRUNCATE later_table")
    refused(db.app, "SELECT setval('later_counter', 100)")
    assert role_problems(db.app) == []


def test_the_app_url_passes_the_check_and_the_others_do_not(db: Db) -> None:
    assert role_problems(db.app) == []

    owner = role_problems(db.owner)
    assert any("owns public.analysis_jobs" in p for p in owner), owner
    assert any("could CREATE TABLE" in p for p in owner), owner
    assert any("has TRUNCATE" in p for p in owner), owner

    admin = role_problems(db.admin)
    assert any("is a superuser" in p for p in admin), admin


def test_the_check_finds_grants_added_by_hand(db: Db, databases: DatabaseFactory) -> None:
    app = databases.roles.app
    with psycopg.connect(libpq_url(db.admin)) as conn:
        conn.execute(sql.SQL("GRANT TRUNCATE ON media_files TO {}").format(sql.Identifier(app)))
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(app)))
        conn.execute(sql.SQL("REVOKE DELETE ON artifacts FROM {}").format(sql.Identifier(app)))
    problems = role_problems(db.app)
    assert f"role {app} has TRUNCATE on public.media_files" in problems
    assert f"role {app} lacks DELETE on public.artifacts" in problems
    assert f"role {app} can CREATE objects in schema public" in problems
    assert any("could CREATE TABLE" in p for p in problems), problems
    # a rerun takes them back
    databases.roles.ensure(db.admin, db.name)
    assert role_problems(db.app) == []
