"""Where a stack's PostgreSQL client tools run and where its stored files are: the one
engine-specific part of backup and restore, as a small interface.

* :class:`infra.backup.local_site.LocalSite` (the embedded engine, or an explicit
  ``MA_DB_URL``): pgserver's bundled ``pg_dump``/``pg_restore`` run here, and the storage root
  is a local directory;
* :class:`infra.backup.container_site.ContainerSite` (compose, Pulumi): the tools run in a
  throwaway container of the PostgreSQL server's own image on the stack's network, and the
  files are read and written through throwaway containers that mount the ``media-storage``
  volume (never started: Docker's archive API reads and writes their volume).

:func:`site_for` picks one from a registry by engine kind. Everything else (the snapshot,
the manifest, verification, roles, store identity) is the same for every engine.

Passwords reach the tools only as a libpq password file (mode 0600, removed afterwards):
never in a process's argument list or environment (``PGPASSFILE`` holds only its path).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from app_patch.db import normalize_url
from infra.backup.manifest import FileRecord

ByteCounter = Callable[[int], None]
"""Called with the number of bytes just moved (progress bars)."""


@dataclass(frozen=True)
class DbTarget:
    """One database as the tools see it. ``password`` is None with trust/peer auth."""

    host: str
    port: int
    dbname: str
    user: str
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> DbTarget:
        parsed = normalize_url(url)
        host = str(parsed.host or parsed.query.get("host") or "")
        return cls(
            host=host,
            port=int(parsed.port or 5432),
            dbname=str(parsed.database or ""),
            user=str(parsed.username or ""),
            password=parsed.password if parsed.password else None,
        )

    def args(self) -> list[str]:
        """Connection options for pg_dump/pg_restore: no password, never a prompt."""
        return ["-h", self.host, "-p", str(self.port), "-U", self.user, "-d", self.dbname, "-w"]

    def pgpass_line(self) -> str:
        """This target's line of a libpq password file (``:`` and ``\\`` escaped)."""

        def escape(value: str) -> str:
            return value.replace("\\", "\\\\").replace(":", "\\:")

        fields = (self.host, str(self.port), self.dbname, self.user, self.password or "")
        return ":".join(escape(v) for v in fields) + "\n"


class Site(Protocol):
    """A stack's tools and files (see the module docstring)."""

    name: str
    """For messages: where the files are (a local root, a volume)."""

    def tools_target(self, owner_url: str) -> DbTarget:
        """The schema owner's database as the tools reach it from where they run."""
        ...

    def dump(self, db: DbTarget, snapshot: str, sink: BinaryIO, on_bytes: ByteCounter) -> str:
        """``pg_dump -Fc --snapshot=<snapshot>`` into ``sink``; returns pg_dump's version."""
        ...

    def check_dump(self, db: DbTarget, dump: Path) -> None:
        """``pg_restore --list``: the target's pg_restore can read this dump. Changes nothing."""
        ...

    def restore_dump(self, db: DbTarget, dump: Path) -> None:
        """``pg_restore --no-owner --no-acl --single-transaction`` into an emptied schema."""
        ...

    def read_files(self, keys: set[str]) -> Iterator[tuple[str, Iterable[bytes]]]:
        """The stored files among ``keys`` that exist, each as its key and its bytes (to be
        consumed before the next is asked for). A key not yielded has no file."""
        ...

    def write_files(
        self, source: Path, records: Iterable[FileRecord], on_bytes: ByteCounter
    ) -> None:
        """Copy ``source/<key>`` to each record's key under the storage root, owned by the
        API's user (files appear complete or not at all where the engine allows)."""
        ...

    def has_stored_files(self) -> bool:
        """Any regular file under ``uploads/`` or ``artifacts/`` of the storage root."""
        ...

    def read_marker(self) -> uuid.UUID | None:
        """The storage root's ``.store-id``, None when it has none."""
        ...

    def write_marker(self, store_id: uuid.UUID) -> None:
        """Create the storage root's ``.store-id`` (only when it has none)."""
        ...
