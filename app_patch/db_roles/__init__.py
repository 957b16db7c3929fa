"""Two PostgreSQL roles instead of one superuser: who may change the schema, who may only use it.

The API and the retention sweeper run as the APPLICATION role: it reads and writes rows and
nothing else (no DDL, no TRUNCATE, no TEMP, no CREATE in ``public``, not a superuser), so a
bug or an injection in the API cannot drop or rewrite the schema. Migrations run as the OWNER
role, which owns every table, sequence and type in ``public`` and has no cluster-wide powers
either. Default privileges make whatever a later migration creates usable by the app without
re-running anything.

- :func:`ensure_roles` (``ensure``): a DBA (``invoke db-roles``), the embedded default and the
  tests run it with a superuser URL; idempotent, it also adopts objects an earlier setup left
  to someone else (a database migrated by the bootstrap superuser before the roles existed).
- :func:`role_problems` (``checks``): ``invoke verify``'s question "is the app's URL really
  unprivileged?", asked as the app role itself.
- :func:`init_sql` (``init_script``): the same grants as a psql script, for the PostgreSQL
  image's initdb hook.

``grants`` holds what each role may do and the statements granting it, ``connect`` the role
URLs, ``embedded`` the fixed role names of a trust-auth server. Names are always composed with
:mod:`psycopg.sql` (identifiers and literals quoted by psycopg), never formatted into strings.
"""

from app_patch.db_roles.checks import role_problems
from app_patch.db_roles.connect import RoleUrls, role_url
from app_patch.db_roles.embedded import EMBEDDED_APP, EMBEDDED_OWNER, embedded_role_urls
from app_patch.db_roles.ensure import ensure_roles
from app_patch.db_roles.grants import (
    APP_FORBIDDEN_TABLE_PRIVILEGES,
    APP_SEQUENCE_PRIVILEGES,
    APP_TABLE_PRIVILEGES,
    SCHEMA,
    RoleSetupError,
    privilege_statements,
)
from app_patch.db_roles.init_script import APP_PASSWORD_VAR, OWNER_PASSWORD_VAR, init_sql

__all__ = [
    "APP_FORBIDDEN_TABLE_PRIVILEGES",
    "APP_PASSWORD_VAR",
    "APP_SEQUENCE_PRIVILEGES",
    "APP_TABLE_PRIVILEGES",
    "EMBEDDED_APP",
    "EMBEDDED_OWNER",
    "OWNER_PASSWORD_VAR",
    "SCHEMA",
    "RoleSetupError",
    "RoleUrls",
    "embedded_role_urls",
    "ensure_roles",
    "init_sql",
    "privilege_statements",
    "role_problems",
    "role_url",
]
