"""How the role setup and checks reach PostgreSQL: role URLs, the connection type, its timeout."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.rows import TupleRow

from app_patch.db import normalize_url

Connection = psycopg.Connection[TupleRow]

CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class RoleUrls:
    """The same database as the two roles; both carry passwords when set: never log them."""

    owner: str
    app: str


def role_url(
    url: str, role: str, password: str | None = None, *, database: str | None = None
) -> str:
    """``url`` (any accepted scheme) with its user, password and optionally database replaced:
    same server, another role. Returns the psycopg-dialect SQLAlchemy form the app takes."""
    parsed = normalize_url(url).set(username=role, password=password)
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)
