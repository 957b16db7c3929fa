"""Two PostgreSQL roles instead of one superuser: who may change the schema, who may only use it.

The API and the retention sweeper run as the APPLICATION role: it reads and writes rows and
nothing else (no DDL, no TRUNCATE, no TEMP, no CREATE in ``public``, not a superuser), so a
bug or an injection in the API cannot drop or rewrite the schema. Migrations run as the OWNER
role, which owns every table, sequence and type in ``public`` and has no cluster-wide powers
either. Default privileges make whatever a later migration creates usable by the app without
re-running anything.

- :func:`ensure_roles`: a DBA (``invoke db-roles``), the embedded default and the tests run it
  with a superuser URL; idempotent, it also adopts objects an earlier setup left to someone
  else (a database migrated by the bootstrap superuser before the roles existed).
- :func:`role_problems`: ``invoke verify``'s question "is the app's URL really unprivileged?",
  asked as the app role itself.
- :func:`init_sql`: the same grants as a psql script, for the PostgreSQL image's initdb hook.

Names are always composed with :mod:`psycopg.sql` (identifiers and literals quoted by psycopg),
never formatted into strings.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from app_patch.db import libpq_conninfo, normalize_url
from app_patch.errors import OperatorError

log = logging.getLogger(__name__)

Connection = psycopg.Connection[TupleRow]

SCHEMA = "public"
EMBEDDED_OWNER = "ma_owner"
"""Role names the embedded server (and the test suite) use; any names work elsewhere."""
EMBEDDED_APP = "ma_app"

ROLE_ATTRIBUTES = sql.SQL(
    "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION INHERIT"
)
"""Both roles: they may log in and nothing cluster-wide (ALTER ROLE re-asserts it each run)."""

APP_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
APP_SEQUENCE_PRIVILEGES = ("USAGE", "SELECT")  # nextval/currval for serial and identity ids
APP_FORBIDDEN_TABLE_PRIVILEGES = ("TRUNCATE", "REFERENCES", "TRIGGER")

OWNER_PASSWORD_VAR = "owner_password"
"""psql variables :func:`init_sql` reads the passwords from (``psql -v owner_password=...``)."""
APP_PASSWORD_VAR = "app_password"

ENSURE_LOCK_KEY = 0x6D61_726F  # "maro": media-analysis roles
ENSURE_ATTEMPTS = 3
CONNECT_TIMEOUT_S = 10
PROBE_TIMEOUTS = "SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = '10s'"
MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: longer names would be silently truncated


class RoleSetupError(OperatorError):
    """The roles cannot be set up as asked (ambiguous names, connected as one of them)."""


@dataclass(frozen=True)
class RoleUrls:
    """The same database as the two roles; both carry passwords when set: never log them."""

    owner: str
    app: str


# --------------------------------------------------------------------------- URLs


def role_url(
    url: str, role: str, password: str | None = None, *, database: str | None = None
) -> str:
    """``url`` (any accepted scheme) with its user, password and optionally database replaced:
    same server, another role. Returns the psycopg-dialect SQLAlchemy form the app takes."""
    parsed = normalize_url(url).set(username=role, password=password)
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


# --------------------------------------------------------------------------- grants


def _names(*privileges: str) -> sql.Composable:
    """Privilege keywords from the module's own constants (never user input)."""
    return sql.SQL(", ").join(sql.SQL(p) for p in privileges)


def privilege_statements(database: str, owner: str, app: str) -> list[sql.Composed]:
    """The grants both :func:`ensure_roles` and :func:`init_sql` apply, in order.

    Each REVOKE before its GRANT makes a rerun converge on exactly these privileges, even
    if someone granted the app more by hand. Only CONNECT survives on the database for the
    two roles (PUBLIC loses CONNECT and TEMP); the app gets USAGE on ``public`` but not
    CREATE; tables and sequences that exist now get their grants directly, later ones
    through the owner's default privileges.
    """
    defaults = "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema}"
    templates = [
        "REVOKE ALL ON DATABASE {db} FROM PUBLIC",
        "REVOKE ALL ON DATABASE {db} FROM {app}",
        "GRANT CONNECT ON DATABASE {db} TO {owner}, {app}",
        "REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC",
        "GRANT USAGE, CREATE ON SCHEMA {schema} TO {owner}",
        "REVOKE ALL ON SCHEMA {schema} FROM {app}",
        "GRANT USAGE ON SCHEMA {schema} TO {app}",
        "REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM PUBLIC, {app}",
        "GRANT {table_privileges} ON ALL TABLES IN SCHEMA {schema} TO {app}",
        "REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM PUBLIC, {app}",
        "GRANT {sequence_privileges} ON ALL SEQUENCES IN SCHEMA {schema} TO {app}",
        defaults + " REVOKE ALL ON TABLES FROM {app}",
        defaults + " GRANT {table_privileges} ON TABLES TO {app}",
        defaults + " REVOKE ALL ON SEQUENCES FROM {app}",
        defaults + " GRANT {sequence_privileges} ON SEQUENCES TO {app}",
    ]
    values = {
        "db": sql.Identifier(database),
        "owner": sql.Identifier(owner),
        "app": sql.Identifier(app),
        "schema": sql.Identifier(SCHEMA),
        "table_privileges": _names(*APP_TABLE_PRIVILEGES),
        "sequence_privileges": _names(*APP_SEQUENCE_PRIVILEGES),
    }
    return [sql.SQL(template).format(**values) for template in templates]


def _check_names(database: str, owner: str, app: str) -> None:
    """Refuse names that would silently do something else than asked."""
    for label, name in (("database", database), ("owner role", owner), ("app role", app)):
        if not name or len(name.encode()) > MAX_IDENTIFIER_BYTES:
            raise RoleSetupError(f"{label} name must be 1-{MAX_IDENTIFIER_BYTES} bytes: {name!r}")
    for label, name in (("owner role", owner), ("app role", app)):
        if name.lower() == "public" or name.startswith("pg_"):
            raise RoleSetupError(f"{label} name {name!r} is reserved by PostgreSQL")
    if owner == app:
        raise RoleSetupError(f"owner and app roles must differ (both are {owner!r})")


# --------------------------------------------------------------------------- ensure_roles


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
    _check_names(database, owner, app)
    for password, label in ((owner_password, "owner"), (app_password, "app")):
        if password is not None and not password:
            raise RoleSetupError(f"the {label} password is empty (pass None to keep it)")
    conninfo = libpq_conninfo(admin_url, database=database)
    for attempt in range(1, ENSURE_ATTEMPTS + 1):
        try:
            with psycopg.connect(conninfo, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                _ensure(conn, database, owner, owner_password, app, app_password)
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


def _ensure(
    conn: Connection,
    database: str,
    owner: str,
    owner_password: str | None,
    app: str,
    app_password: str | None,
) -> None:
    """One transaction of :func:`ensure_roles` (committed by the caller's ``with``)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (ENSURE_LOCK_KEY,))
    row = conn.execute("SELECT session_user").fetchone()
    assert row is not None
    me = str(row[0])
    if me in {owner, app}:
        raise RoleSetupError(
            f"connect as an administrator, not as {me!r}: ensure_roles would strip its own rights"
        )
    _ensure_role(conn, owner, owner_password)
    _ensure_role(conn, app, app_password)
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


# --------------------------------------------------------------------------- role_problems


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
        row = conn.execute(
            "SELECT current_user, current_database(), rolsuper, rolcreaterole, rolcreatedb,"
            " rolbypassrls, rolreplication FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row is not None
        me, database = str(row[0]), str(row[1])
        for flag, text in zip(
            row[2:],
            (
                "is a superuser",
                "has CREATEROLE",
                "has CREATEDB",
                "has BYPASSRLS",
                "has REPLICATION",
            ),
            strict=True,
        ):
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
    rows = conn.execute(
        "SELECT rolname FROM pg_roles"
        " WHERE rolname <> current_user AND pg_has_role(current_user, oid, 'MEMBER')"
        " AND (rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls)"
        " ORDER BY rolname"
    ).fetchall()
    return [f"role {me} is a member of the privileged role {r[0]}" for r in rows]


def _database_and_schema_rights(conn: Connection, me: str, database: str) -> list[str]:
    row = conn.execute(
        "SELECT has_database_privilege(current_database(), 'CREATE'),"
        " has_database_privilege(current_database(), 'TEMP'),"
        " has_schema_privilege(%s, 'CREATE')",
        (SCHEMA,),
    ).fetchone()
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
    rows = conn.execute(
        "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')"
        " AND pg_has_role(current_user, c.relowner, 'USAGE')"
        " UNION ALL"
        " SELECT t.typname, pg_get_userbyid(t.typowner) FROM pg_type t"
        " JOIN pg_namespace n ON n.oid = t.typnamespace"
        " WHERE n.nspname = %(schema)s AND t.typtype IN ('e', 'd', 'r')"
        " AND pg_has_role(current_user, t.typowner, 'USAGE')"
        " ORDER BY 1",
        {"schema": SCHEMA},
    ).fetchall()
    return [
        f"role {me} owns {SCHEMA}.{name}" + ("" if owner == me else f" (through role {owner})")
        for name, owner in rows
    ]


def _table_rights(conn: Connection, me: str) -> list[str]:
    """Every table must be usable (else the API fails later) and no more than usable."""
    problems = []
    rows = conn.execute(
        "SELECT c.relname,"
        " array(SELECT p FROM unnest(%(want)s::text[]) p WHERE NOT has_table_privilege(c.oid, p)),"
        " array(SELECT p FROM unnest(%(deny)s::text[]) p WHERE has_table_privilege(c.oid, p))"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'f', 'v', 'm')"
        " ORDER BY c.relname",
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
    sequences = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind = 'S'"
        # CASE: SQL may test the privilege before the relkind, and it fails on tables
        " AND CASE WHEN c.relkind = 'S' THEN NOT has_sequence_privilege(c.oid, 'USAGE') END"
        " ORDER BY c.relname",
        (SCHEMA,),
    ).fetchall()
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


# --------------------------------------------------------------------------- init_sql


def init_sql(database: str, owner: str, app: str) -> str:
    """:func:`ensure_roles` as a psql script, for an image's ``docker-entrypoint-initdb.d``.

    Run it connected to ``database`` as a superuser, passing the passwords as psql
    variables (either may be omitted: that role's password is left as it is)::

        psql -v ON_ERROR_STOP=1 -v owner_password="$OWNER_PW" -v app_password="$APP_PW" \\
             -d "$POSTGRES_DB" -f roles.sql

    Idempotent like :func:`ensure_roles`; it does not adopt existing objects (there are none
    at initdb time): run ``ensure_roles`` for a database that was migrated before.
    """
    _check_names(database, owner, app)
    lines = [
        "-- media-analysis roles: schema owner and application (generated by",
        "-- app_patch.db_roles.init_sql; psql variables: owner_password, app_password)",
        r"\set ON_ERROR_STOP on",
        "BEGIN;",
        f"SELECT pg_advisory_xact_lock({ENSURE_LOCK_KEY});",
    ]
    for name, variable in ((owner, OWNER_PASSWORD_VAR), (app, APP_PASSWORD_VAR)):
        role = sql.Identifier(name)
        create = sql.SQL("CREATE ROLE {} WITH {}").format(role, ROLE_ATTRIBUTES).as_string(None)
        lines.append(
            sql.SQL("SELECT {} WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {})")
            .format(sql.Literal(create), sql.Literal(name))
            .as_string(None)
            + r" \gexec"
        )
        lines.append(
            sql.SQL("ALTER ROLE {} WITH {};").format(role, ROLE_ATTRIBUTES).as_string(None)
        )
        lines += [
            rf"\if :{{?{variable}}}",
            sql.SQL("ALTER ROLE {} PASSWORD ").format(role).as_string(None) + f":'{variable}';",
            r"\endif",
        ]
    lines += [s.as_string(None) + ";" for s in privilege_statements(database, owner, app)]
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- embedded


def embedded_role_urls(admin_url: str, database: str) -> RoleUrls:
    """Set up :data:`EMBEDDED_OWNER` and :data:`EMBEDDED_APP` on a trust-auth server (the
    embedded pgserver, the tests' servers) and return their URLs, without passwords."""
    ensure_roles(
        admin_url,
        database=database,
        owner=EMBEDDED_OWNER,
        owner_password=None,
        app=EMBEDDED_APP,
        app_password=None,
    )
    return RoleUrls(
        owner=role_url(admin_url, EMBEDDED_OWNER, database=database),
        app=role_url(admin_url, EMBEDDED_APP, database=database),
    )
