"""The trust boundary in PostgreSQL: the app role uses rows, only the owner role changes schema.

Every test gets its own database on the session's server (roles are cluster-wide, grants are
per database). Refusals are asserted by doing the forbidden thing as the app role and
expecting PostgreSQL's ``insufficient_privilege``, never by reading the catalog alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from app_patch import migrate as migrations
from app_patch.db import libpq_conninfo, libpq_url
from app_patch.db_roles import (
    RoleSetupError,
    embedded_role_urls,
    ensure_roles,
    init_sql,
    role_problems,
    role_url,
)
from app_patch.errors import describe
from app_patch.models import ALL_TABLES
from app_patch.settings import PROJECT_ROOT, DatabaseSettings, RedisSettings
from tests.conftest import DatabaseFactory, database_name

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Db:
    """One fresh database at head: the three URLs to it."""

    admin: str
    owner: str
    app: str

    @property
    def name(self) -> str:
        return database_name(self.admin)


@pytest.fixture
def db(databases: DatabaseFactory) -> Db:
    owner = databases.create("roles")
    migrations.upgrade(owner)
    name = database_name(owner)
    return Db(databases.admin_url_of(name), owner, databases.roles.app_url(owner))


def refused(url: str, statement: str | sql.Composable) -> str:
    """Run ``statement`` in a transaction that is rolled back; the error PostgreSQL gave."""
    with psycopg.connect(libpq_url(url)) as conn:
        try:
            conn.execute(statement)  # type: ignore[arg-type]
        except psycopg.errors.InsufficientPrivilege as exc:
            return str(exc)
        finally:
            conn.rollback()
    raise AssertionError(f"allowed: {statement!r}")


def scalar(url: str, query: str, *params: object) -> object:
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute(query, params or None).fetchone()
    return None if row is None else row[0]


def acl_snapshot(admin_url: str) -> dict[str, object]:
    """Every privilege and owner ensure_roles touches, for before/after comparisons."""
    with psycopg.connect(libpq_url(admin_url)) as conn:
        return {
            "relations": conn.execute(
                "SELECT c.relname, pg_get_userbyid(c.relowner), c.relacl::text FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
                " AND c.relkind IN ('r', 'S', 'v') ORDER BY 1"
            ).fetchall(),
            "schema": conn.execute(
                "SELECT pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace"
                " WHERE nspname = 'public'"
            ).fetchall(),
            "database": conn.execute(
                "SELECT datacl::text FROM pg_database WHERE datname = current_database()"
            ).fetchall(),
            "defaults": conn.execute(
                "SELECT pg_get_userbyid(defaclrole), defaclobjtype, defaclacl::text"
                " FROM pg_default_acl ORDER BY 1, 2"
            ).fetchall(),
            "roles": conn.execute(
                "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolcanlogin"
                " FROM pg_roles WHERE rolname LIKE 'ma\\_%' ORDER BY 1"
            ).fetchall(),
        }


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


# --------------------------------------------------------------------------- ensure_roles


def test_ensure_roles_is_idempotent(db: Db, databases: DatabaseFactory) -> None:
    before = acl_snapshot(db.admin)
    for _ in range(2):
        databases.roles.ensure(db.admin, db.name)
    assert acl_snapshot(db.admin) == before
    assert role_problems(db.app) == []


def test_ensure_roles_adopts_a_database_migrated_before_the_roles_existed(
    databases: DatabaseFactory,
) -> None:
    """The old layout: everything created (and owned) by the bootstrap superuser."""
    admin = databases.create("legacy", with_roles=False)
    migrations.upgrade(admin)
    with psycopg.connect(libpq_url(admin)) as conn:
        conn.execute(
            "INSERT INTO retention_events (object_type, object_id, policy, reason)"
            " VALUES ('media', 'x', 'expired', 'before the roles')"
        )
    roles = databases.roles
    roles.ensure(admin, database_name(admin))

    with psycopg.connect(libpq_url(admin)) as conn:
        owners: dict[str, str] = dict(
            conn.execute(
                "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S', 'i')"
                " UNION ALL SELECT t.typname, pg_get_userbyid(t.typowner) FROM pg_type t"
                " JOIN pg_namespace n ON n.oid = t.typnamespace"
                " WHERE n.nspname = 'public' AND t.typtype = 'e'"
            ).fetchall()
        )
    assert {t.name for t in ALL_TABLES} | {"alembic_version", "job_status"} <= set(owners)
    assert set(owners.values()) == {roles.owner}, owners

    app = roles.app_url(admin)
    assert role_problems(app) == []
    with psycopg.connect(libpq_url(app)) as conn:
        (new_id,) = conn.execute(
            "INSERT INTO retention_events (object_type, object_id, policy, reason)"
            " VALUES ('media', 'y', 'expired', 'after') RETURNING id"
        ).fetchone() or (None,)
    assert new_id == 2, "the identity sequence kept counting and the app may use it"
    # and the owner migrates it from now on
    assert migrations.downgrade(roles.owner_url(admin), "0001").to_revision == "0001"
    assert migrations.upgrade(roles.owner_url(admin)).to_revision == "0002"


def test_ensure_roles_keeps_passwords_as_scram_and_updates_them(
    databases: DatabaseFactory,
) -> None:
    admin = databases.create("pw", with_roles=False)
    name = database_name(admin)
    owner, app = "ma_pw_owner", "ma_pw_app"

    def verifiers() -> dict[str, str]:
        with psycopg.connect(libpq_url(admin)) as conn:
            rows = conn.execute(
                "SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN (%s, %s)",
                (owner, app),
            ).fetchall()
        return {str(r): str(p) for r, p in rows}

    ensure_roles(
        admin, database=name, owner=owner, owner_password="o-1", app=app, app_password="a'1"
    )
    first = verifiers()
    assert all(v.startswith("SCRAM-SHA-256$") for v in first.values()), first
    ensure_roles(admin, database=name, owner=owner, owner_password=None, app=app, app_password=None)
    assert verifiers() == first, "None keeps the password"
    ensure_roles(
        admin, database=name, owner=owner, owner_password="o-2", app=app, app_password="a'1"
    )
    second = verifiers()
    assert second[owner] != first[owner]
    assert second[app] != first[app], "a new salt each time, same password"


@pytest.mark.parametrize(
    ("owner", "app", "expected"),
    [
        ("ma_same", "ma_same", "must differ"),
        ("pg_owner", "ma_app", "reserved"),
        ("ma_owner", "public", "reserved"),
        ("o" * 64, "ma_app", "1-63 bytes"),
    ],
)
def test_ensure_roles_refuses_ambiguous_names(
    databases: DatabaseFactory, owner: str, app: str, expected: str
) -> None:
    with pytest.raises(RoleSetupError, match=expected):
        ensure_roles(
            databases.admin_url,
            database="postgres",
            owner=owner,
            owner_password=None,
            app=app,
            app_password=None,
        )


def test_ensure_roles_refuses_to_demote_the_connecting_role(
    db: Db, databases: DatabaseFactory
) -> None:
    with pytest.raises(RoleSetupError, match="connect as an administrator") as caught:
        ensure_roles(
            db.owner,
            database=db.name,
            owner=databases.roles.owner,
            owner_password=None,
            app="ma_other_app",
            app_password=None,
        )
    assert describe(caught.value) == str(caught.value)


def test_embedded_role_urls_are_the_two_roles(databases: DatabaseFactory) -> None:
    admin = databases.create("embedded", with_roles=False)
    urls = embedded_role_urls(admin, database_name(admin))
    migrations.upgrade(urls.owner)
    assert role_problems(urls.app) == []
    assert scalar(urls.owner, "SELECT current_user") == "ma_owner"
    assert scalar(urls.app, "SELECT current_user") == "ma_app"
    odd = "p w@:/%#?&'\\"
    other = make_url(role_url(urls.app, "x", odd, database="d"))
    assert (other.username, other.password, other.database) == ("x", odd, "d")
    assert other.query == make_url(urls.app).query, "the socket directory is kept"
    assert conninfo_to_dict(libpq_conninfo(str(other.render_as_string(False))))["password"] == odd


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


# --------------------------------------------------------------------------- settings


def _child_env(**env: str) -> dict[str, str]:
    """This environment without any setting of ours, plus ``env``."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MA_") and k not in {"DATABASE_URL", "REDIS_URL"}
    }
    return {**base, **env}


def _child(env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=_child_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


UPGRADE = (
    "from app_patch import migrate; r = migrate.upgrade(); print(r.from_revision, r.to_revision)"
)


def test_migrations_use_the_migration_url_and_the_app_url_cannot_migrate(
    databases: DatabaseFactory, tmp_path: Path
) -> None:
    owner = databases.create("split")
    app = databases.roles.app_url(owner)

    proc = _child({"MA_DB_URL": app}, UPGRADE)
    assert proc.returncode != 0 and "permission denied" in proc.stderr, proc.stderr

    secret = tmp_path / "migration_url"
    secret.write_text(owner + "\n")
    proc = _child({"MA_DB_URL": app, "MA_DB_MIGRATION_URL_FILE": str(secret)}, UPGRADE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "0002"]
    assert role_problems(app) == []

    # alembic's own CLI goes through migrations/env.py: the owner URL from the settings
    proc = subprocess.run(
        [sys.executable, "-m", "alembic", "downgrade", "0001"],
        cwd=PROJECT_ROOT,
        env=_child_env(MA_DB_URL=app, MA_DB_MIGRATION_URL=owner),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert migrations.current_revision(app) == "0001"


def test_url_files_are_read_when_the_variable_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MA_DB_URL", "DATABASE_URL", "MA_DB_MIGRATION_URL", "MA_REDIS_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    files = {}
    for name, value in {
        "db": "postgresql://app:s3cret@db/x",
        "mig": "postgresql://owner:s3cret@db/x",
        "redis": "redis://:s3cret@cache:6379/0",
    }.items():
        files[name] = tmp_path / name
        files[name].write_text(value + "\n")
    monkeypatch.setenv("MA_DB_URL_FILE", str(files["db"]))
    monkeypatch.setenv("MA_DB_MIGRATION_URL_FILE", str(files["mig"]))
    monkeypatch.setenv("MA_REDIS_URL_FILE", str(files["redis"]))
    db, redis = DatabaseSettings(), RedisSettings()
    assert db.url is not None and db.url.get_secret_value() == "postgresql://app:s3cret@db/x"
    assert db.migration_url is not None
    assert db.migration_url.get_secret_value() == "postgresql://owner:s3cret@db/x"
    assert redis.url is not None and redis.url.get_secret_value() == "redis://:s3cret@cache:6379/0"
    assert "s3cret" not in repr(db) + repr(redis)

    monkeypatch.setenv("DATABASE_URL", "postgresql://plain@db/x")  # the variable wins
    assert DatabaseSettings().url.get_secret_value() == "postgresql://plain@db/x"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("group", "variable"),
    [
        (DatabaseSettings, "MA_DB_URL_FILE"),
        (DatabaseSettings, "MA_DB_MIGRATION_URL_FILE"),
        (RedisSettings, "MA_REDIS_URL_FILE"),
    ],
)
def test_an_unreadable_url_file_is_one_error_naming_the_variable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    group: type[DatabaseSettings | RedisSettings],
    variable: str,
) -> None:
    for name in ("MA_DB_URL", "DATABASE_URL", "MA_DB_MIGRATION_URL", "MA_REDIS_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "missing"))
    with pytest.raises(ValidationError) as caught:
        group()
    line = describe(caught.value)
    assert line is not None
    assert line.startswith(f"invalid settings: {variable}: ") and "No such file" in line, line

    empty = tmp_path / "empty"
    empty.write_text("\n")
    monkeypatch.setenv(variable, str(empty))
    with pytest.raises(ValidationError, match="is empty"):
        group()


def test_a_missing_url_file_fails_a_task_with_one_line(tmp_path: Path) -> None:
    proc = _child(
        {"MA_DB_MIGRATION_URL_FILE": str(tmp_path / "nope"), "MA_DB_URL": "postgresql://x@h/d"},
        "from app_patch.errors import one_line_errors\n"
        "from app_patch.settings import get_settings\n"
        "with one_line_errors():\n    get_settings()\n",
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: invalid settings: MA_DB_MIGRATION_URL_FILE: "), lines
    assert f"cannot read {tmp_path / 'nope'}: No such file or directory" in lines[0]


def test_a_migration_url_without_an_app_url_is_refused_for_the_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app_patch.errors import OperatorError
    from app_patch.settings import Settings
    from app_patch.target import migration_url, resolve_target

    for name in ("MA_DB_URL", "DATABASE_URL", "MA_DB_URL_FILE"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(db=DatabaseSettings(migration_url="postgresql://owner@db/x"))
    assert migration_url(settings) == "postgresql://owner@db/x", "a migration job needs no more"
    with pytest.raises(OperatorError, match="MA_DB_URL is not"):
        resolve_target(settings)


def test_target_falls_back_to_the_app_url_for_migrations() -> None:
    from app_patch.settings import Settings
    from app_patch.target import resolve_target

    one = Settings(db=DatabaseSettings(url="postgresql://only@db/x"))
    assert resolve_target(one).migration_url == "postgresql://only@db/x"
    two = Settings(
        db=DatabaseSettings(url="postgresql://app@db/x", migration_url="postgresql://own@db/x")
    )
    target = resolve_target(two)
    assert (target.database_url, target.migration_url) == (
        "postgresql://app@db/x",
        "postgresql://own@db/x",
    )


@pytest.fixture
def embedded_data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"
    from app_patch.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path / "data" / "pg")
    if (server.data_dir / "postmaster.pid").exists():
        server.start()  # a handle, to stop it
        server.stop()


def test_the_embedded_default_runs_the_app_as_the_app_role(
    embedded_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No URL configured: pgserver under data_dir, with both roles; a second resolve (a new
    process, a rerun) converges on the same URLs."""
    from app_patch.settings import Settings
    from app_patch.target import resolve_target

    for name in ("MA_DB_URL", "DATABASE_URL", "MA_DB_MIGRATION_URL", "MA_DB_URL_FILE"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(data_dir=embedded_data_dir, db=DatabaseSettings())
    target = resolve_target(settings)
    assert target.database_url != target.migration_url
    migrations.upgrade(target.migration_url)
    assert resolve_target(settings) == target
    assert role_problems(target.database_url) == []
    assert scalar(target.database_url, "SELECT current_user") == "ma_app"
