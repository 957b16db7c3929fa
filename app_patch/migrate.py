"""Alembic driven from code: upgrade with from -> to reporting, and schema status.

Every function takes the URL to act on; without one it is the schema OWNER's
(``app_patch.target.migration_url``: MA_DB_MIGRATION_URL, else MA_DB_URL, else the embedded
server's owner role), because the application role may not create or alter tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine

from app_patch.db import normalize_url
from app_patch.models import ALL_TABLES
from app_patch.settings import PROJECT_ROOT

ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"


def default_url() -> str:
    """The schema owner's URL from the settings (imported late: it may start pgserver)."""
    from app_patch.settings import get_settings
    from app_patch.target import migration_url

    return migration_url(get_settings())


def alembic_config(url: str | None = None) -> Config:
    url = url or default_url()
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", _sync_url(url).replace("%", "%%"))
    return config


def _sync_url(url: str) -> str:
    return normalize_url(url).render_as_string(hide_password=False)


def _engine(url: str) -> Engine:
    return create_engine(_sync_url(url), pool_pre_ping=True, connect_args={"connect_timeout": 5})


def current_revision(url: str | None = None) -> str | None:
    engine = _engine(url or default_url())
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


@dataclass(frozen=True)
class UpgradeReport:
    from_revision: str | None
    to_revision: str | None

    @property
    def changed(self) -> bool:
        return self.from_revision != self.to_revision


def upgrade(url: str | None = None, revision: str = "head") -> UpgradeReport:
    """Migrate to ``revision``; env.py serialises concurrent runs with an advisory lock and
    records the revisions it saw while holding it."""
    config = alembic_config(url)
    command.upgrade(config, revision)
    return _report(config)


def downgrade(url: str | None, revision: str) -> UpgradeReport:
    config = alembic_config(url)
    command.downgrade(config, revision)
    return _report(config)


def _report(config: Config) -> UpgradeReport:
    return UpgradeReport(
        config.attributes.get("revision_before"), config.attributes.get("revision_after")
    )


@dataclass
class SchemaStatus:
    current: str | None
    head: str | None
    pending: list[str] = field(default_factory=list)
    row_counts: dict[str, int | None] = field(default_factory=dict)

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def status(url: str | None = None) -> SchemaStatus:
    url = url or default_url()
    script = ScriptDirectory.from_config(alembic_config(url))
    head = script.get_current_head()
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            pending = [
                rev.revision
                for rev in script.iterate_revisions(head, current)
                if rev.revision != current
            ]
            existing = set(inspect(conn).get_table_names())
            counts: dict[str, int | None] = {}
            for table in ALL_TABLES:
                counts[table.name] = (
                    conn.execute(text(f'SELECT count(*) FROM "{table.name}"')).scalar_one()
                    if table.name in existing
                    else None
                )
    finally:
        engine.dispose()
    return SchemaStatus(
        current=current, head=head, pending=list(reversed(pending)), row_counts=counts
    )
