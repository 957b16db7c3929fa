"""What the two roles may do: their attributes and privileges, valid names, the GRANT statements."""

from __future__ import annotations

from psycopg import sql

from app_patch.errors import OperatorError

SCHEMA = "public"

ROLE_ATTRIBUTES = sql.SQL(
    "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION INHERIT"
)
"""Both roles: they may log in and nothing cluster-wide (ALTER ROLE re-asserts it each run)."""

APP_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
APP_SEQUENCE_PRIVILEGES = ("USAGE", "SELECT")  # nextval/currval for serial and identity ids
APP_FORBIDDEN_TABLE_PRIVILEGES = ("TRUNCATE", "REFERENCES", "TRIGGER")

ENSURE_LOCK_KEY = 0x6D61_726F  # "maro": media-analysis roles
MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: longer names would be silently truncated


class RoleSetupError(OperatorError):
    """The roles cannot be set up as asked (ambiguous names, connected as one of them)."""


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


def check_names(database: str, owner: str, app: str) -> None:
    """Refuse names that would silently do something else than asked."""
    for label, name in (("database", database), ("owner role", owner), ("app role", app)):
        if not name or len(name.encode()) > MAX_IDENTIFIER_BYTES:
            raise RoleSetupError(f"{label} name must be 1-{MAX_IDENTIFIER_BYTES} bytes: {name!r}")
    for label, name in (("owner role", owner), ("app role", app)):
        if name.lower() == "public" or name.startswith("pg_"):
            raise RoleSetupError(f"{label} name {name!r} is reserved by PostgreSQL")
    if owner == app:
        raise RoleSetupError(f"owner and app roles must differ (both are {owner!r})")
