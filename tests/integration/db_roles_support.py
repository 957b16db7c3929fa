"""What the database role tests share: one fresh database at head with its three URLs, and
running a statement as a role to see PostgreSQL refuse it (no tests here; the ``db`` fixture is
in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from app_patch.db import libpq_url
from tests.conftest import database_name


@dataclass(frozen=True)
class Db:
    """One fresh database at head: the three URLs to it."""

    admin: str
    owner: str
    app: str

    @property
    def name(self) -> str:
        return database_name(self.admin)


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
