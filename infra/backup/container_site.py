"""The container engines' site (compose, Pulumi): tools and files through throwaway containers.

* ``pg_dump``/``pg_restore`` run in a throwaway container of the PostgreSQL server's own
  image (so the tools match the server's major version, in managed and external mode alike)
  on the stack's network, as ``nobody``, with every capability dropped. Its password file and,
  for a restore, the dump are put into the container before it starts (the archive API; the
  file is 0600 and owned by ``nobody``); the container runs ``sleep`` for at most an hour and
  the tools are ``docker exec``'d in it, the dump streamed out of the exec's stdout.
* Files are read and written through a container of the API's image that mounts the
  ``media-storage`` volume and is never started: Docker's archive API reads (``get_archive``)
  and writes (``put_archive``) the volume of a created container, while the API container
  itself refuses ``put_archive`` (its root filesystem is read-only, and Docker refuses even
  for volume paths). Written entries carry the API's uid 10001 and the store's modes, parent
  directories included, so the API can keep writing next to them. This needs no shell, no
  tar binary and no file list in any container's argument list; the price is that a read
  streams a whole area (``uploads/``, ``artifacts/``) and skips what no live row names.

Every throwaway container carries this checkout's owner label and is removed (with its
anonymous volumes, never the named ones) when the operation ends.
"""

from __future__ import annotations

import io
import secrets
import tarfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import docker
from docker.errors import NotFound
from docker.types import LogConfig

from infra import docker_host
from infra.backup.manifest import CHUNK, FILES, BackupError, FileRecord
from infra.backup.site import ByteCounter, DbTarget
from infra.config import StackConfig
from infra.engines.record import OWNER_LABEL
from infra.in_stack import EXEC_IDLE_TIMEOUT_S
from infra.stack import API_UID, LABELS, POSTGRES_PORT, STORAGE_ROOT

NOBODY = 65534
PGPASS = "/tmp/ma-pgpass"
DUMP_IN_CONTAINER = "/tmp/database.dump"
TOOL_LIFETIME_S = 3600  # the tools container's own sleep: it ends even if we die
AREAS = ("uploads", "artifacts")
MARKER = ".store-id"
ROLE_LABEL = "io.media-analysis-kit.role"


@dataclass(frozen=True)
class _Entry:
    """One tar member to write: a directory (``source`` None, ``size`` 0) or a file."""

    name: str
    mode: int
    uid: int
    source: Path | None = None
    body: bytes | None = None
    size: int = 0


def _tar_stream(entries: Iterable[_Entry], on_bytes: ByteCounter | None = None) -> Iterator[bytes]:
    """A tar archive produced piece by piece (never the whole file in memory)."""
    for entry in entries:
        info = tarfile.TarInfo(entry.name)
        info.uid = info.gid = entry.uid
        info.mode = entry.mode
        info.mtime = int(time.time())
        if entry.source is None and entry.body is None:
            info.type = tarfile.DIRTYPE
            yield info.tobuf(format=tarfile.PAX_FORMAT)
            continue
        info.size = entry.size
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        sent = 0
        if entry.body is not None:
            yield entry.body
            sent = len(entry.body)
        else:
            assert entry.source is not None
            with entry.source.open("rb") as handle:
                for chunk in iter(lambda h=handle: h.read(CHUNK), b""):  # type: ignore[misc]
                    sent += len(chunk)
                    if sent > entry.size:
                        raise BackupError(f"{entry.source} grew while it was being copied")
                    yield chunk
                    if on_bytes is not None:
                        on_bytes(len(chunk))
        if sent != entry.size:
            raise BackupError(f"{entry.name}: {sent} bytes read, {entry.size} expected")
        if entry.size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - entry.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


class _ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (for ``tarfile`` in stream mode)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class ContainerSite:
    def __init__(self, config: StackConfig, owner: str | None) -> None:
        self.config = config
        self.owner = owner
        api = docker_host.inspect(config.api_name)
        self.api_image = str(api["Image"])
        volumes = [
            m.get("Name")
            for m in api.get("Mounts") or []
            if m.get("Type") == "volume" and m.get("Destination") == STORAGE_ROOT
        ]
        if not volumes:
            raise BackupError(f"{config.api_name} mounts no volume at {STORAGE_ROOT}")
        self.volume = str(volumes[0])
        self.name = f"volume {self.volume}"

    # ------------------------------------------------------------ containers

    def _labels(self, role: str) -> dict[str, str]:
        labels = {**LABELS, ROLE_LABEL: role}
        if self.owner:
            labels[OWNER_LABEL] = self.owner
        return labels

    @contextmanager
    def _container(
        self, role: str, image: str, **options: Any
    ) -> Iterator[tuple[docker.DockerClient, str]]:
        """A hardened throwaway container (created, not started), removed at the end."""
        with closing(docker_host.client(timeout_s=EXEC_IDLE_TIMEOUT_S)) as engine:
            created = engine.containers.create(
                image,
                name=f"ma-{role}-{secrets.token_hex(4)}",
                labels=self._labels(role),
                cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"],
                pids_limit=128,
                log_config=LogConfig(type="none"),
                **options,
            )
            try:
                yield engine, str(created.id)
            finally:
                with suppress(NotFound):
                    engine.api.remove_container(str(created.id), force=True, v=True)

    def _volume_container(
        self, *, writable: bool
    ) -> AbstractContextManager[tuple[docker.DockerClient, str]]:
        mode = "rw" if writable else "ro"
        return self._container(
            "files",
            self.api_image,
            command=["true"],  # never started
            user=f"{API_UID}:{API_UID}",
            network_mode="none",
            volumes={self.volume: {"bind": STORAGE_ROOT, "mode": mode}},
        )

    @contextmanager
    def _tools(self, db: DbTarget, extra: Iterable[_Entry] = ()) -> Iterator[_Tools]:
        """The PostgreSQL image's tools, running (``sleep``) with the password file in /tmp."""
        image = str(docker_host.inspect(self.config.postgres_host)["Image"])
        with self._container(
            "pgtools",
            image,
            entrypoint=["sleep"],
            command=[str(TOOL_LIFETIME_S)],
            user=f"{NOBODY}:{NOBODY}",
            network=self.config.network_name,
        ) as (engine, cid):
            body = db.pgpass_line().encode("utf-8")
            entries = [_Entry(PGPASS.removeprefix("/tmp/"), 0o600, NOBODY, body=body,
                              size=len(body)), *extra]  # fmt: skip
            if not engine.api.put_archive(cid, "/tmp", _tar_stream(entries)):
                raise BackupError("could not put the password file into the tools container")
            engine.api.start(cid)
            yield _Tools(engine, cid)

    # ------------------------------------------------------------ database

    def tools_target(self, owner_url: str) -> DbTarget:
        """The owner's URL as the tools container reaches it: the server by its name on the
        stack's network."""
        found = DbTarget.from_url(owner_url)
        return DbTarget(self.config.postgres_host, POSTGRES_PORT, found.dbname, found.user,
                        found.password)  # fmt: skip

    def dump(self, db: DbTarget, snapshot: str, sink: BinaryIO, on_bytes: ByteCounter) -> str:
        with self._tools(db) as tools:
            command = ["pg_dump", "-Fc", f"--snapshot={snapshot}", *db.args()]

            def write(chunk: bytes) -> None:
                sink.write(chunk)
                on_bytes(len(chunk))

            tools.run(command, write)
            return tools.output(["pg_dump", "--version"]).strip()

    def check_dump(self, db: DbTarget, dump: Path) -> None:
        with self._with_dump(db, dump) as tools:
            tools.run(["pg_restore", "--list", DUMP_IN_CONTAINER], lambda _chunk: None)

    def restore_dump(self, db: DbTarget, dump: Path) -> None:
        from infra.backup.local_site import RESTORE_OPTIONS

        with self._with_dump(db, dump) as tools:
            command = ["pg_restore", *RESTORE_OPTIONS, *db.args(), DUMP_IN_CONTAINER]
            tools.run(command, lambda _chunk: None)

    def _with_dump(self, db: DbTarget, dump: Path) -> AbstractContextManager[_Tools]:
        size = dump.stat().st_size
        entry = _Entry(DUMP_IN_CONTAINER.removeprefix("/tmp/"), 0o600, NOBODY, dump, size=size)
        return self._tools(db, [entry])

    # ------------------------------------------------------------ files

    def _members(
        self, engine: docker.DockerClient, cid: str, path: str
    ) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
        try:
            stream, _stat = engine.api.get_archive(cid, f"{STORAGE_ROOT}/{path}", chunk_size=CHUNK)
        except NotFound:
            return
        with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(stream), CHUNK), mode="r|") as tar:
            for member in tar:
                yield member, tar

    def read_files(self, keys: set[str]) -> Iterator[tuple[str, Iterable[bytes]]]:
        with self._volume_container(writable=False) as (engine, cid):
            for area in AREAS:
                for member, tar in self._members(engine, cid, area):
                    key = member.name.removeprefix("./")
                    if not member.isfile() or key not in keys:
                        continue
                    handle = tar.extractfile(member)
                    assert handle is not None
                    yield key, iter(lambda h=handle: h.read(CHUNK), b"")  # type: ignore[misc]

    def write_files(
        self, source: Path, records: Iterable[FileRecord], on_bytes: ByteCounter
    ) -> None:
        with self._volume_container(writable=True) as (engine, cid):
            stream = _tar_stream(_with_parents(source, records), on_bytes)
            if not engine.api.put_archive(cid, STORAGE_ROOT, stream):
                raise BackupError(f"Docker refused to write the files into {self.volume}")

    def has_stored_files(self) -> bool:
        with self._volume_container(writable=False) as (engine, cid):
            for area in AREAS:
                for member, _tar in self._members(engine, cid, area):
                    if member.isfile():
                        return True
        return False

    def read_marker(self) -> uuid.UUID | None:
        with self._volume_container(writable=False) as (engine, cid):
            for member, tar in self._members(engine, cid, MARKER):
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is None:
                    continue
                try:
                    return uuid.UUID(handle.read(256).decode("ascii").strip())
                except (ValueError, UnicodeDecodeError):
                    return None
        return None

    def write_marker(self, store_id: uuid.UUID) -> None:
        body = f"{store_id}\n".encode("ascii")
        with self._volume_container(writable=True) as (engine, cid):
            entry = _Entry(MARKER, 0o644, API_UID, body=body, size=len(body))
            if not engine.api.put_archive(cid, STORAGE_ROOT, _tar_stream([entry])):
                raise BackupError(f"Docker refused to write {MARKER} into {self.volume}")


def _with_parents(source: Path, records: Iterable[FileRecord]) -> Iterator[_Entry]:
    """Each record as a file entry owned by the API user, preceded by every parent directory
    not yet sent (Docker would otherwise create missing parents as root)."""
    sent: set[str] = set()
    for record in records:
        parts = record.path.split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory not in sent:
                sent.add(directory)
                yield _Entry(directory, 0o755, API_UID)
        yield _Entry(record.path, 0o640, API_UID, source / FILES / record.path, size=record.size)


@dataclass
class _Tools:
    """``docker exec`` in the running tools container, with the password file's path."""

    engine: docker.DockerClient
    cid: str

    def run(self, command: list[str], on_stdout: Callable[[bytes], None]) -> None:
        api = self.engine.api
        created = api.exec_create(
            self.cid, command, user=f"{NOBODY}:{NOBODY}", environment=dict(_PGENV)
        )
        exec_id = str(created["Id"])
        errors = bytearray()
        for stdout, stderr in api.exec_start(exec_id, stream=True, demux=True):
            if stdout:
                on_stdout(stdout)
            if stderr and len(errors) < 65536:
                errors += stderr
        code = api.exec_inspect(exec_id).get("ExitCode")
        if code != 0:
            lines = [ln for ln in errors.decode("utf-8", "replace").splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else "no output"
            raise BackupError(f"{command[0]} failed in the tools container (exit {code}): {last}")

    def output(self, command: list[str]) -> str:
        out = bytearray()
        self.run(command, out.extend)
        return out.decode("utf-8", "replace")


_PGENV: Mapping[str, str] = {"PGPASSFILE": PGPASS}
"""The tools' environment: the password file's path, never the password."""
