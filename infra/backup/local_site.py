"""The embedded engine's site: pgserver's own ``pg_dump``/``pg_restore`` run here, and the
storage root is a directory of this host (:class:`infra.backup.site.Site`)."""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from app_patch.storage import ARTIFACTS, TMP, UPLOADS, create_durably, fsync_dir
from app_patch.store_identity import MARKER_NAME, read_marker
from infra.backup.manifest import CHUNK, FILES, BackupError, FileRecord
from infra.backup.site import ByteCounter, DbTarget

TOOL_TIMEOUT_S = 6 * 3600
_STDERR_TAIL = 2000


def tools_dir() -> Path:
    """pgserver's bundled PostgreSQL 16 binaries (the embedded server's own version)."""
    from app_patch.embedded import _import_pgserver

    return Path(_import_pgserver().__file__).parent / "pginstall" / "bin"


@contextmanager
def pgpass_env(db: DbTarget) -> Iterator[dict[str, str]]:
    """The environment for a libpq tool: with a password, ``PGPASSFILE`` names a 0600 file
    holding it (removed afterwards); the password itself is in no argument or variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if db.password is None:
        yield env
        return
    fd, path = tempfile.mkstemp(prefix="ma-pgpass-")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(db.pgpass_line())
        yield {**env, "PGPASSFILE": path}
    finally:
        with suppress(FileNotFoundError):
            os.unlink(path)


def _failed(tool: str, code: int, stderr: bytes) -> BackupError:
    lines = [ln for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else "no output"
    return BackupError(f"{tool} failed (exit {code}): {last[:_STDERR_TAIL]}")


class LocalSite:
    def __init__(self, storage_root: Path, bin_dir: Path | None = None) -> None:
        self.root = Path(os.path.abspath(storage_root))
        self.bin = bin_dir or tools_dir()
        self.name = f"here ({self.root})"

    def tools_target(self, owner_url: str) -> DbTarget:
        return DbTarget.from_url(owner_url)

    def _tool(self, name: str) -> str:
        path = self.bin / name
        if not path.is_file():
            raise BackupError(f"{name} not found in {self.bin} (the pgserver package)")
        return str(path)

    def dump(self, db: DbTarget, snapshot: str, sink: BinaryIO, on_bytes: ByteCounter) -> str:
        command = [self._tool("pg_dump"), "-Fc", f"--snapshot={snapshot}", *db.args()]
        with pgpass_env(db) as env, tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
            )
            assert process.stdout is not None
            with process:
                for chunk in iter(lambda: process.stdout.read(CHUNK), b""):  # type: ignore[union-attr]
                    sink.write(chunk)
                    on_bytes(len(chunk))
            errors.seek(0)
            if process.returncode != 0:
                raise _failed("pg_dump", process.returncode, errors.read())
        return self._version("pg_dump")

    def _version(self, tool: str) -> str:
        done = subprocess.run(
            [self._tool(tool), "--version"], capture_output=True, text=True, timeout=30
        )
        return done.stdout.strip()

    def _run(self, tool: str, args: list[str], db: DbTarget) -> None:
        with pgpass_env(db) as env:
            done = subprocess.run(
                [self._tool(tool), *args],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=TOOL_TIMEOUT_S,
            )
        if done.returncode != 0:
            raise _failed(tool, done.returncode, done.stderr)

    def check_dump(self, db: DbTarget, dump: Path) -> None:
        self._run("pg_restore", ["--list", str(dump)], db)

    def restore_dump(self, db: DbTarget, dump: Path) -> None:
        args = [*RESTORE_OPTIONS, *db.args(), str(dump)]
        self._run("pg_restore", args, db)

    def read_files(self, keys: set[str]) -> Iterator[tuple[str, Iterable[bytes]]]:
        for key in sorted(keys):
            try:
                handle = (self.root / key).open("rb")
            except (FileNotFoundError, NotADirectoryError):
                continue
            with handle:
                yield key, iter(lambda h=handle: h.read(CHUNK), b"")  # type: ignore[misc]

    def write_files(
        self, source: Path, records: Iterable[FileRecord], on_bytes: ByteCounter
    ) -> None:
        """Each file to ``tmp/`` of the root, fsync'd, renamed onto its key (atomic), its
        directory fsync'd: as the API's own store writes."""
        tmp = self.root / TMP
        tmp.mkdir(parents=True, exist_ok=True)
        for record in records:
            final = self.root / record.path
            final.parent.mkdir(parents=True, exist_ok=True)
            staging = tmp / f"ma-restore-{secrets.token_hex(16)}.part"
            try:
                with (source / FILES / record.path).open("rb") as src, staging.open("xb") as out:
                    os.fchmod(out.fileno(), 0o640)
                    for chunk in iter(lambda s=src: s.read(CHUNK), b""):  # type: ignore[misc]
                        out.write(chunk)
                        on_bytes(len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(staging, final)
            finally:
                with suppress(FileNotFoundError):
                    staging.unlink()
            fsync_dir(final.parent)

    def has_stored_files(self) -> bool:
        for area in (UPLOADS, ARTIFACTS):
            for _dirpath, _dirs, files in os.walk(self.root / area):
                if files:
                    return True
        return False

    def read_marker(self) -> uuid.UUID | None:
        return read_marker(self.root)

    def write_marker(self, store_id: uuid.UUID) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        create_durably(self.root / MARKER_NAME, f"{store_id}\n".encode("ascii"))


RESTORE_OPTIONS = ("--no-owner", "--no-acl", "--single-transaction", "--exit-on-error")
"""Objects belong to the role that restores (the target's schema owner); the source's grants
are not replayed (the target's default privileges and :mod:`infra.backup.database` grant the
app role); one transaction, so a failed restore leaves the emptied schema, not half a one."""
