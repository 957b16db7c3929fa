"""A database's content in a comparable form: per table, its rows and an md5 of them in
order, so any change shows (no tests here)."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from psycopg import sql

from app_patch.db import libpq_conninfo

# What a backup carries and a restore must give back.
COMPARED = ("analysis_jobs", "analysis_results", "media_files", "artifacts", "retention_events")


def schema_tables(url: str) -> list[str]:
    """Every table of the schema."""
    with psycopg.connect(libpq_conninfo(url), connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        ).fetchall()
    return [str(name) for (name,) in rows]


def fingerprint(url: str, tables: Iterable[str] = COMPARED) -> dict[str, tuple[int, str | None]]:
    """Per table: (rows, md5 of its rows in order)."""
    with psycopg.connect(libpq_conninfo(url), connect_timeout=10) as conn:
        found: dict[str, tuple[int, str | None]] = {}
        for table in tables:
            query = sql.SQL(
                "SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {} t"
            ).format(sql.Identifier(table))
            row = conn.execute(query).fetchone()
            assert row is not None
            found[table] = (int(row[0]), row[1])
    return found
