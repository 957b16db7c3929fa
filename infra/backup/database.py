"""The database side of backup and restore, over psycopg as the schema owner (from this host).

**Backup consistency.** :func:`exported_snapshot` opens a ``REPEATABLE READ READ ONLY``
transaction and exports its snapshot (``pg_export_snapshot()``); in that same snapshot it
reads the schema revision, the recorded store id, each table's row count and the list of
live stored files. ``pg_dump --snapshot=<id>`` then dumps exactly that state while the
transaction stays open, so the dump and the file list agree row for row.

**Files deleted meanwhile.** The files are copied after the dump. Retention may delete an
expired file after the snapshot (it unlinks under its storage-key lock, then commits the row
as deleted): the dump then holds a live row whose file is gone. Holding a shared
storage-key lock (:mod:`app_patch.file_locks`) on every live key is no cure: a lock taken
after the snapshot does not help for a file retention unlinked just before it, and before
the snapshot would need one advisory lock per file (PostgreSQL's shared lock table holds a
few thousand). So the backup re-checks instead: a live file that is gone when it is copied is
listed in the manifest (``missing``) and reported, and :func:`finish_restore` marks those rows
deleted, with a ``retention_events`` row, exactly what retention did in the live stack. No
restored row points at nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from app_patch.db import libpq_conninfo
from app_patch.db_roles import APP_SEQUENCE_PRIVILEGES, APP_TABLE_PRIVILEGES, SCHEMA
from app_patch.models import ALL_TABLES
from app_patch.retention import ObjectType
from infra.backup.manifest import BackupError, MissingFile

CONNECT_TIMEOUT_S = 10
FILE_TABLES = ("media_files", "artifacts")
OBJECT_TYPES = {"media_files": ObjectType.media_file, "artifacts": ObjectType.artifact}
JOB_TABLES = ("analysis_jobs", "media_files", "artifacts")
"""A target with a row in any of these is not empty (restore needs --force)."""


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    return psycopg.connect(
        libpq_conninfo(url), connect_timeout=CONNECT_TIMEOUT_S, autocommit=autocommit
    )


@dataclass(frozen=True)
class LiveFile:
    key: str
    table: str
    row_id: str
    sha256: str
    size: int


@dataclass(frozen=True)
class SnapshotView:
    snapshot: str
    taken_at: str  # the transaction's now(), ISO 8601 UTC
    revision: str | None
    store_id: uuid.UUID | None
    server_version: str
    rows: dict[str, int]
    files: dict[str, LiveFile]  # by storage key


def _tables(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
        (SCHEMA,),
    ).fetchall()
    return {str(r[0]) for r in rows}


@contextmanager
def exported_snapshot(owner_url: str) -> Iterator[SnapshotView]:
    """The transaction described in the module docstring, open while the block runs."""
    with connect(owner_url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        row = conn.execute(
            "SELECT pg_export_snapshot(), to_char(now() AT TIME ZONE 'UTC',"
            " 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), current_setting('server_version')"
        ).fetchone()
        assert row is not None
        snapshot, taken_at, version = str(row[0]), str(row[1]), str(row[2])
        present = _tables(conn)
        missing = [t.name for t in ALL_TABLES if t.name not in present]
        if "alembic_version" not in present or missing:
            raise BackupError(
                "the database is not migrated (missing tables: "
                f"{', '.join(missing) or 'alembic_version'}): run invoke migrate first"
            )
        found = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = str(found[0]) if found else None
        found = conn.execute("SELECT store_id FROM store_identity").fetchone()
        store_id = found[0] if found else None
        rows = {
            t.name: int(
                conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t.name))
                ).fetchone()[0]  # type: ignore[index]
            )
            for t in ALL_TABLES
        }
        files: dict[str, LiveFile] = {}
        for table in FILE_TABLES:
            query = sql.SQL(
                "SELECT storage_key, id::text, sha256, size_bytes FROM {}"
                " WHERE deleted_at IS NULL ORDER BY storage_key"
            ).format(sql.Identifier(table))
            for key, row_id, sha, size in conn.execute(query):
                files[str(key)] = LiveFile(str(key), table, str(row_id), str(sha), int(size))
        try:
            yield SnapshotView(snapshot, taken_at, revision, store_id, version, rows, files)
        finally:
            conn.rollback()


def target_rows(owner_url: str) -> dict[str, int]:
    """Rows in the tables that make a target non-empty (absent tables count as empty)."""
    with connect(owner_url, autocommit=True) as conn:
        present = _tables(conn)
        return {
            name: int(
                conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
                ).fetchone()[0]  # type: ignore[index]
            )
            for name in JOB_TABLES
            if name in present
        }


_OWNED = """
SELECT c.relkind::text, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND pg_get_userbyid(c.relowner) = current_user
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
"""
_OWNED_TYPES = """
SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = %(schema)s AND t.typtype IN ('e', 'd', 'r')
  AND pg_get_userbyid(t.typowner) = current_user
"""
_KINDS = {
    "r": "TABLE",
    "p": "TABLE",
    "v": "VIEW",
    "m": "MATERIALIZED VIEW",
    "S": "SEQUENCE",
    "f": "FOREIGN TABLE",
}


def empty_schema(owner_url: str) -> list[str]:
    """Drop everything the schema owner owns in ``public`` (tables with their indexes and
    sequences, views, enum/domain/range types), in one transaction: the schema pg_restore
    fills must be empty, whatever revision the target was at. Returns what it dropped."""
    dropped: list[str] = []
    with connect(owner_url) as conn:
        params = {"schema": SCHEMA}
        for kind, name in conn.execute(_OWNED, params).fetchall():
            keyword = sql.SQL(_KINDS[str(kind)])
            target = sql.Identifier(SCHEMA, str(name))
            conn.execute(sql.SQL("DROP {} IF EXISTS {} CASCADE").format(keyword, target))
            dropped.append(str(name))
        for (name,) in conn.execute(_OWNED_TYPES, params).fetchall():
            target = sql.Identifier(SCHEMA, str(name))
            conn.execute(sql.SQL("DROP TYPE IF EXISTS {} CASCADE").format(target))
            dropped.append(str(name))
    return dropped


def finish_restore(
    owner_url: str,
    app_role: str | None,
    store_id: uuid.UUID,
    missing: tuple[MissingFile, ...],
) -> None:
    """One transaction after pg_restore (and any migration): the app role's grants on every
    table and sequence (pg_restore --no-acl replays none; the same privileges
    :mod:`app_patch.db_roles` grants, the part a schema owner may grant); ``store_identity``
    pointed at the target root's id; rows whose file was deleted during the backup marked
    deleted and audited, as retention did."""
    with connect(owner_url) as conn:
        if app_role:
            names = {
                "schema": sql.Identifier(SCHEMA),
                "app": sql.Identifier(app_role),
                "tables": sql.SQL(", ").join(sql.SQL(p) for p in APP_TABLE_PRIVILEGES),
                "sequences": sql.SQL(", ").join(sql.SQL(p) for p in APP_SEQUENCE_PRIVILEGES),
            }
            for template in (
                "REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM PUBLIC, {app}",
                "GRANT {tables} ON ALL TABLES IN SCHEMA {schema} TO {app}",
                "REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM PUBLIC, {app}",
                "GRANT {sequences} ON ALL SEQUENCES IN SCHEMA {schema} TO {app}",
            ):
                conn.execute(sql.SQL(template).format(**names))
        conn.execute("DELETE FROM store_identity")
        conn.execute("INSERT INTO store_identity (store_id) VALUES (%s)", (store_id,))
        for gone in missing:
            table = sql.Identifier(gone.table if gone.table in FILE_TABLES else "media_files")
            updated = conn.execute(
                sql.SQL(
                    "UPDATE {} SET deleted_at = now() WHERE id = %s AND deleted_at IS NULL"
                ).format(table),
                (uuid.UUID(gone.row_id),),
            )
            if updated.rowcount:
                conn.execute(
                    "INSERT INTO retention_events (object_type, object_id, storage_key,"
                    " bytes_freed, policy, reason) VALUES (%s, %s, %s, 0, 'backup', %s)",
                    (
                        str(OBJECT_TYPES.get(gone.table, ObjectType.media_file)),
                        gone.row_id,
                        gone.path,
                        "file deleted while the backup ran (restored row marked deleted)",
                    ),
                )
