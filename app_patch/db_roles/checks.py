"""``role_problems``: is the app's URL really unprivileged? Asked as the app role itself."""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql

from app_patch.db import libpq_conninfo
from app_patch.db_roles.connect import CONNECT_TIMEOUT_S, Connection
from app_patch.db_roles.grants import (
    APP_FORBIDDEN_TABLE_PRIVILEGES,
    APP_TABLE_PRIVILEGES,
    SCHEMA,
)

PROBE_TIMEOUTS = "SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = '10s'"

# ---- the catalog questions, one statement each

_ATTRIBUTES = (
    "SELECT current_user, current_database(), rolsuper, rolcreaterole, rolcreatedb,"
    " rolbypassrls, rolreplication FROM pg_roles WHERE rolname = current_user"
)
_ATTRIBUTE_PROBLEMS = (
    "is a superuser",
    "has CREATEROLE",
    "has CREATEDB",
    "has BYPASSRLS",
    "has REPLICATION",
)  # in the order of the flags _ATTRIBUTES selects after the user and database

_PRIVILEGED_MEMBERSHIPS = (
    "SELECT rolname FROM pg_roles"
    " WHERE rolname <> current_user AND pg_has_role(current_user, oid, 'MEMBER')"
    " AND (rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls)"
    " ORDER BY rolname"
)

_DATABASE_AND_SCHEMA_RIGHTS = (
    "SELECT has_database_privilege(current_database(), 'CREATE'),"
    " has_database_privilege(current_database(), 'TEMP'),"
    " has_schema_privilege(%s, 'CREATE')"
)

_OWNED_OBJECTS = (
    "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')"
    " AND pg_has_role(current_user, c.relowner, 'USAGE')"
    " UNION ALL"
    " SELECT t.typname, pg_get_userbyid(t.typowner) FROM pg_type t"
    " JOIN pg_namespace n ON n.oid = t.typnamespace"
    " WHERE n.nspname = %(schema)s AND t.typtype IN ('e', 'd', 'r')"
    " AND pg_has_role(current_user, t.typowner, 'USAGE')"
    " ORDER BY 1"
)

_TABLE_RIGHTS = (
    "SELECT c.relname,"
    " array(SELECT p FROM unnest(%(want)s::text[]) p WHERE NOT has_table_privilege(c.oid, p)),"
    " array(SELECT p FROM unnest(%(deny)s::text[]) p WHERE has_table_privilege(c.oid, p))"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'f', 'v', 'm')"
    " ORDER BY c.relname"
)

_UNUSABLE_SEQUENCES = (
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = %s AND c.relkind = 'S'"
    # CASE: SQL may test the privilege before the relkind, and it fails on tables
    " AND CASE WHEN c.relkind = 'S' THEN NOT has_sequence_privilege(c.oid, 'USAGE') END"
    " ORDER BY c.relname"
)


def role_problems(app_url: str) -> list[str]:
    """What the role behind ``app_url`` may do beyond reading and writing rows, as sentences.

    Connects as that role (connection errors propagate as ``psycopg.OperationalError``),
    reads its attributes and privileges from the catalog, and tries a ``CREATE TABLE`` in
    ``public`` inside a transaction that is always rolled back. An empty list means the
    URL is fit for the API; the owner's or a superuser's URL yields several problems.
    """
    problems: list[str] = []
    with psycopg.connect(libpq_conninfo(app_url), connect_timeout=CONNECT_TIMEOUT_S) as conn:
        conn.execute(PROBE_TIMEOUTS)
        row = conn.execute(_ATTRIBUTES).fetchone()
        assert row is not None
        me, database = str(row[0]), str(row[1])
        for flag, text in zip(row[2:], _ATTRIBUTE_PROBLEMS, strict=True):
            if flag:
                problems.append(f"role {me} {text}")
        problems += _inherited_powers(conn, me)
        problems += _database_and_schema_rights(conn, me, database)
        problems += _owned_objects(conn, me)
        problems += _table_rights(conn, me)
        conn.rollback()
        problems += _probe_create_table(conn, me)
    return problems


def _inherited_powers(conn: Connection, me: str) -> list[str]:
    rows = conn.execute(_PRIVILEGED_MEMBERSHIPS).fetchall()
    return [f"role {me} is a member of the privileged role {r[0]}" for r in rows]


def _database_and_schema_rights(conn: Connection, me: str, database: str) -> list[str]:
    row = conn.execute(_DATABASE_AND_SCHEMA_RIGHTS, (SCHEMA,)).fetchone()
    assert row is not None
    problems = []
    if row[0]:
        problems.append(f"role {me} can CREATE schemas in database {database}")
    if row[1]:
        problems.append(f"role {me} can create TEMP tables in database {database}")
    if row[2]:
        problems.append(f"role {me} can CREATE objects in schema {SCHEMA}")
    return problems


def _owned_objects(conn: Connection, me: str) -> list[str]:
    """Owning (directly or through a role it belongs to) means ALTER and DROP rights."""
    rows = conn.execute(_OWNED_OBJECTS, {"schema": SCHEMA}).fetchall()
    return [
        f"role {me} owns {SCHEMA}.{name}" + ("" if owner == me else f" (through role {owner})")
        for name, owner in rows
    ]


def _table_rights(conn: Connection, me: str) -> list[str]:
    """Every table must be usable (else the API fails later) and no more than usable."""
    problems = []
    rows = conn.execute(
        _TABLE_RIGHTS,
        {
            "schema": SCHEMA,
            "want": list(APP_TABLE_PRIVILEGES),
            "deny": list(APP_FORBIDDEN_TABLE_PRIVILEGES),
        },
    ).fetchall()
    for name, missing, extra in rows:
        if missing:
            problems.append(f"role {me} lacks {', '.join(missing)} on {SCHEMA}.{name}")
        if extra:
            problems.append(f"role {me} has {', '.join(extra)} on {SCHEMA}.{name}")
    sequences = conn.execute(_UNUSABLE_SEQUENCES, (SCHEMA,)).fetchall()
    problems += [f"role {me} cannot use sequence {SCHEMA}.{r[0]}" for r in sequences]
    return problems


def _probe_create_table(conn: Connection, me: str) -> list[str]:
    """The catalog answer, checked by doing it: a table that is created is rolled back."""
    probe = sql.Identifier(SCHEMA, f"ma_role_probe_{uuid.uuid4().hex[:12]}")
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(PROBE_TIMEOUTS)
            conn.execute(sql.SQL("CREATE TABLE {} (id integer)").format(probe))
    except psycopg.errors.InsufficientPrivilege:
        return []
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [f"role {me}: the CREATE TABLE probe failed unexpectedly ({first})"]
    return [f"role {me} could CREATE TABLE in schema {SCHEMA} (the probe was rolled back)"]
