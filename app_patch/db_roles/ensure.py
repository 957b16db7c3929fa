"""``ensure_roles``: create or re-assert the two roles, adopt stray objects, apply the grants."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from app_patch.db import libpq_conninfo
from app_patch.db_roles.connect import CONNECT_TIMEOUT_S, Connection
from app_patch.db_roles.grants import (
    ENSURE_LOCK_KEY,
    ROLE_ATTRIBUTES,
    SCHEMA,
    RoleSetupError,
    check_names,
    privilege_statements,
)

log = logging.getLogger(__name__)

ENSURE_ATTEMPTS = 3


@dataclass(frozen=True)
class _Roles:
    """What one :func:`ensure_roles` call sets up; the passwords stay out of its repr."""

    database: str
    owner: str
    app: str
    owner_password: str | None = field(repr=False)
    app_password: str | None = field(repr=False)


def ensure_roles(
    admin_url: str,
    *,
    database: str,
    owner: str,
    owner_password: str | None,
    app: str,
    app_password: str | None,
) -> None:
    """Create or update the OWNER and APPLICATION roles and their privileges in ``database``.

    ``admin_url``: a superuser's URL on the same server (its database part is ignored: we
    connect to ``database``, which must exist). Safe to rerun: roles are created when
    missing and otherwise re-asserted (attributes, and passwords when given; ``None`` keeps
    a role's current password, e.g. the embedded server's trust auth needs none). Everything
    happens in one transaction, so a failure leaves the database as it was.

    Objects in ``public`` owned by anyone but ``owner`` (tables, views, sequences, types, e.g.
    from migrations run as the bootstrap superuser) are re-owned to ``owner`` and each is
    logged; the app is taken out of ``owner`` if it was a member. Passwords reach the server
    as SCRAM verifiers computed here, never as clear text in a statement.
    """
    check_names(database, owner, app)
    for password, label in ((owner_password, "owner"), (app_password, "app")):
        if password is not None and not password:
            raise RoleSetupError(f"the {label} password is empty (pass None to keep it)")
    roles = _Roles(database, owner, app, owner_password, app_password)
    conninfo = libpq_conninfo(admin_url, database=database)
    for attempt in range(1, ENSURE_ATTEMPTS + 1):
        try:
            with psycopg.connect(conninfo, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                _ensure(conn, roles)
            return
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject) as exc:
            # CREATE ROLE raced with a run on another database (roles are cluster-wide; our
            # advisory lock is per database): the transaction is gone, the next try sees it.
            if attempt == ENSURE_ATTEMPTS:
                raise RoleSetupError(f"could not set up the roles: {exc}") from None
        except psycopg.errors.InternalError_ as exc:
            # "tuple concurrently updated": two GRANTs on one shared catalog row at once
            if "concurrently" not in str(exc) or attempt == ENSURE_ATTEMPTS:
                raise
        time.sleep(0.1 * attempt)


def _ensure(conn: Connection, roles: _Roles) -> None:
    """One transaction of :func:`ensure_roles` (committed by the caller's ``with``)."""
    database, owner, app = roles.database, roles.owner, roles.app
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (ENSURE_LOCK_KEY,))
    row = conn.execute("SELECT session_user").fetchone()
    assert row is not None
    me = str(row[0])
    if me in {owner, app}:
        raise RoleSetupError(
            f"connect as an administrator, not as {me!r}: ensure_roles would strip its own rights"
        )
    _ensure_role(conn, owner, roles.owner_password)
    _ensure_role(conn, app, roles.app_password)
    _separate(conn, owner, app)
    _take_database_from_app(conn, database, owner, app)
    _adopt(conn, owner)
    for statement in privilege_statements(database, owner, app):
        conn.execute(statement)


def _role_exists(conn: Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def _ensure_role(conn: Connection, name: str, password: str | None) -> None:
    role = sql.Identifier(name)
    if not _role_exists(conn, name):
        conn.execute(sql.SQL("CREATE ROLE {} WITH {}").format(role, ROLE_ATTRIBUTES))
        log.info("created role %s", name)
    statement = sql.SQL("ALTER ROLE {} WITH {}").format(role, ROLE_ATTRIBUTES)
    if password is not None:
        verifier = conn.pgconn.encrypt_password(password.encode(), name.encode(), b"scram-sha-256")
        statement = sql.SQL("{} PASSWORD {}").format(statement, sql.Literal(verifier.decode()))
    conn.execute(statement)


def _separate(conn: Connection, owner: str, app: str) -> None:
    """A member of the owner role would inherit its right to ALTER and DROP every table."""
    member = conn.execute(
        "SELECT 1 FROM pg_auth_members m"
        " JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member"
        " WHERE r.rolname = %s AND u.rolname = %s",
        (owner, app),
    ).fetchone()
    if member is not None:
        conn.execute(
            sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(owner), sql.Identifier(app))
        )
        log.warning(
            "removed role %s from role %s (it inherited the schema owner's rights)", app, owner
        )


def _take_database_from_app(conn: Connection, database: str, owner: str, app: str) -> None:
    """A database owned by the app would give it CREATE (schemas) and ``public`` itself."""
    row = conn.execute(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,)
    ).fetchone()
    if row is not None and row[0] == app:
        conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(database), sql.Identifier(owner)
            )
        )
        log.warning("database %s was owned by the app role %s: now by %s", database, app, owner)


_ADOPT_RELATION_KINDS = {
    "r": "TABLE",
    "p": "TABLE",
    "f": "FOREIGN TABLE",
    "v": "VIEW",
    "m": "MATERIALIZED VIEW",
    "S": "SEQUENCE",
}

_FOREIGN_RELATIONS = """
SELECT c.relkind::text, c.relname, pg_get_userbyid(c.relowner)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s
  AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
  AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = %(owner)s)
  -- a serial/identity sequence follows its table's owner (ALTER SEQUENCE would be refused)
  AND NOT (c.relkind = 'S' AND EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
        AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
ORDER BY c.relkind <> 'r', c.relkind <> 'p', c.relname
"""

_FOREIGN_TYPES = """
SELECT t.typname, pg_get_userbyid(t.typowner)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = %(schema)s
  AND t.typowner <> (SELECT oid FROM pg_roles WHERE rolname = %(owner)s)
  AND (t.typtype IN ('e', 'd', 'r')
       OR (t.typtype = 'c' AND EXISTS (
           SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind = 'c')))
ORDER BY t.typname
"""


def _adopt(conn: Connection, owner: str) -> None:
    """Make ``owner`` own what migrations made in ``public`` under another role.

    Only the kinds migrations create (tables with their indexes and linked sequences,
    views, standalone sequences, enum/domain/range/composite types); functions and other
    schemas are left alone. Each change is logged with the previous owner.
    """
    params = {"schema": SCHEMA, "owner": owner}
    new_owner = sql.Identifier(owner)
    for kind, name, previous in conn.execute(_FOREIGN_RELATIONS, params).fetchall():
        keyword = _ADOPT_RELATION_KINDS[str(kind)]
        target = sql.Identifier(SCHEMA, str(name))
        statement = sql.SQL("ALTER {} {} OWNER TO {}")
        conn.execute(statement.format(sql.SQL(keyword), target, new_owner))
        log.info("%s %s.%s: owner %s -> %s", keyword.lower(), SCHEMA, name, previous, owner)
    for name, previous in conn.execute(_FOREIGN_TYPES, params).fetchall():
        target = sql.Identifier(SCHEMA, str(name))
        conn.execute(sql.SQL("ALTER TYPE {} OWNER TO {}").format(target, new_owner))
        log.info("type %s.%s: owner %s -> %s", SCHEMA, name, previous, owner)
