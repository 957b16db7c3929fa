"""Which database and which storage root a command acts on: one answer for the API's tools.

``python -m app_patch.retention``, ``python -m app_patch.outbox`` and ``migrations/env.py`` ask
here; ``infra.stack_ops`` adds the container stack's view on top (where the stack's volume
lives), for the invoke tasks. Retention additionally proves the pair belongs together
(``store_identity``) before it reconciles anything.

There are two URLs to one database (see ``app_patch.db_roles``): the APPLICATION role's,
for everything that reads and writes rows (API, retention, outbox), and the schema OWNER's,
for migrations only. Configured: ``MA_DB_URL`` and ``MA_DB_MIGRATION_URL`` (which falls back
to ``MA_DB_URL``, a single-role setup). Not configured: the embedded PostgreSQL, on which the
two roles are created (trust auth on its Unix socket, so no passwords).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app_patch.db_roles import RoleUrls, embedded_role_urls
from app_patch.embedded import EmbeddedPostgres
from app_patch.errors import OperatorError
from app_patch.settings import Settings


@dataclass(frozen=True)
class Target:
    database_url: str  # the application role: carries a password, never log it
    storage_root: Path
    migration_url: str  # the schema owner, for migrations only: never log it either


def embedded_urls(settings: Settings) -> RoleUrls:
    """Start the embedded PostgreSQL under ``data_dir`` if needed and make sure its owner and
    app roles exist (idempotent: cheap on every call, and it re-owns tables that an earlier
    version migrated as the bootstrap superuser)."""
    server = EmbeddedPostgres(settings.data_dir / "pg")
    admin_url = server.start()
    return embedded_role_urls(admin_url, server.database)


def migration_url(settings: Settings) -> str:
    """The schema owner's URL: MA_DB_MIGRATION_URL, else MA_DB_URL, else the embedded owner.

    Needs no app URL, so a migration job can be given the owner's credentials alone.
    """
    db = settings.db
    if db.migration_url is not None:
        return db.migration_url.get_secret_value()
    if db.url is not None:
        return db.url.get_secret_value()
    return embedded_urls(settings).owner


def resolve_target(settings: Settings) -> Target:
    """The app's URL, the owner's URL (the embedded PostgreSQL's roles when neither is
    configured) and the storage root."""
    db = settings.db
    root = Path(settings.storage.root)
    if db.url is not None:
        return Target(db.url.get_secret_value(), root, migration_url(settings))
    if db.migration_url is not None:
        raise OperatorError(
            "MA_DB_MIGRATION_URL is set but MA_DB_URL is not: set MA_DB_URL to the application "
            "role's URL on the same database (unset both for the embedded PostgreSQL)"
        )
    urls = embedded_urls(settings)
    return Target(urls.app, root, urls.owner)
