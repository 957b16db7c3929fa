"""``ensure_roles``: it converges (idempotent, adopts a database the superuser owned, keeps or
renews SCRAM passwords), refuses ambiguous names and demoting itself, and gives the embedded
server its two role URLs."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url

from app_patch import migrate as migrations
from app_patch.db import libpq_conninfo, libpq_url
from app_patch.db_roles import (
    RoleSetupError,
    embedded_role_urls,
    ensure_roles,
    role_problems,
    role_url,
)
from app_patch.errors import describe
from app_patch.models import ALL_TABLES
from tests.conftest import DatabaseFactory, database_name
from tests.integration.db_roles_support import Db, scalar

pytestmark = pytest.mark.timeout(120)


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
