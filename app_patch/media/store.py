"""``MediaStore``: uploads and artifacts stored with their rows, and opened for the API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import Row, case, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch import store_identity
from app_patch.file_locks import lock_key
from app_patch.media.fields import clean_content_type, clean_original_name
from app_patch.media.opened import OpenedFile
from app_patch.models import Artifact, MediaFile
from app_patch.repository import JobNotFoundError, MediaSnapshot
from app_patch.settings import RetentionSettings
from app_patch.storage import (
    StagedFile,
    Storage,
    StorageUnavailableError,
    StoredFileMissingError,
    artifact_key,
    upload_key,
)
from app_patch.threads import in_thread

_FK_VIOLATION = "23503"


class MediaNotFoundError(LookupError):
    """No live media file (or artifact) by that id/hash, or its file is gone (HTTP 404)."""


@dataclass(frozen=True)
class StoredMedia:
    id: uuid.UUID
    sha256: str
    size_bytes: int
    content_type: str
    storage_key: str
    created: bool  # True when this upload made the media live (new row, or a deleted one revived)
    original_name: str | None = None


@dataclass(frozen=True)
class StoredArtifact:
    id: uuid.UUID
    job_id: uuid.UUID
    kind: str
    storage_key: str
    size_bytes: int
    sha256: str
    content_type: str
    expires_at: datetime | None


class MediaStore:
    """What the HTTP layer calls for file bytes: uploads, artifacts and streaming reads."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        storage: Storage,
        retention: RetentionSettings,
    ) -> None:
        self.sessions = sessions
        self.storage = storage
        self.retention = retention
        self.identity_checked = False
        self.identity_problem: str | None = None  # why the root is refused (readiness)

    async def check_identity(self) -> None:
        """Record this root as the database's store, or refuse a root that is not
        (``StoreMismatchError``); checked once per process, before the first write."""
        if self.identity_checked:
            return
        try:
            async with self.sessions.begin() as session:
                conn = await session.connection()
                await store_identity.check_for_writer(conn, self.storage.root)
        except store_identity.StoreMismatchError as exc:
            self.identity_problem = str(exc)
            raise
        except OSError as exc:  # the marker cannot be read or written: a storage failure
            raise StorageUnavailableError.from_os(exc, "use the storage marker") from exc
        self.identity_checked = True
        self.identity_problem = None

    @property
    def _uploads_ttl(self) -> timedelta:
        return timedelta(days=self.retention.uploads_days)

    # ---- uploads

    async def register_upload(
        self,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str | None = None,
        original_name: str | None = None,
        max_bytes: int | None = None,
    ) -> StoredMedia:
        """Store an upload once per distinct content and upsert its ``media_files`` row.

        Raises ``UploadTooLargeError`` (413), ``StorageUnavailableError`` (507); the tmp
        file never outlives the call unless it became the stored file.
        """
        async with self.storage.stage(chunks, max_bytes=max_bytes) as staged:
            return await self.register_staged(
                staged, content_type=content_type, original_name=original_name
            )

    async def register_staged(
        self,
        staged: StagedFile,
        *,
        content_type: str | None = None,
        original_name: str | None = None,
    ) -> StoredMedia:
        """The transactional half of ``register_upload`` for a caller that staged the bytes
        itself (e.g. to analyse the tmp file first): lock, upsert, place, commit.

        Call it inside the ``storage.stage()`` block, before placing the file yourself.
        """
        key = upload_key(staged.sha256)
        await self.check_identity()
        async with self.sessions.begin() as session:
            await lock_key(session, key)
            before = (
                await session.execute(
                    select(MediaFile.deleted_at)
                    .where(MediaFile.sha256 == staged.sha256)
                    .with_for_update()
                )
            ).one_or_none()
            row = await self._upsert_media(
                session,
                staged.sha256,
                staged.size_bytes,
                key,
                clean_content_type(content_type),
                clean_original_name(original_name),
            )
            await self.storage.place(staged, key)
        return StoredMedia(
            id=row.id,
            sha256=staged.sha256,
            size_bytes=staged.size_bytes,
            content_type=row.content_type,
            storage_key=key,
            created=before is None or before.deleted_at is not None,
            original_name=row.original_name,
        )

    async def register_placed(
        self, session: AsyncSession, media: MediaSnapshot
    ) -> uuid.UUID | None:
        """Make the row of a file placed earlier live (outbox replay), in the caller's
        transaction, in the order of ``file_locks``: key lock, row lock, then the file check,
        so no sweeper can remove the file between the check and the commit. None when the
        file is already gone."""
        await lock_key(session, media.storage_key)
        await session.execute(
            select(MediaFile.id).where(MediaFile.sha256 == media.sha256).with_for_update()
        )
        if not await in_thread(self.storage.exists, media.storage_key):
            return None
        row = await self._upsert_media(
            session,
            media.sha256,
            media.size_bytes,
            media.storage_key,
            clean_content_type(media.content_type),
            clean_original_name(media.original_name),
        )
        media_id: uuid.UUID = row.id
        return media_id

    async def _upsert_media(
        self,
        session: AsyncSession,
        sha256: str,
        size: int,
        key: str,
        content_type: str,
        original_name: str | None,
    ) -> Row[uuid.UUID, str, str | None]:
        stmt = insert(MediaFile).values(
            id=uuid.uuid4(),
            sha256=sha256,
            size_bytes=size,
            content_type=content_type,
            original_name=original_name,
            storage_key=key,
            expires_at=func.now() + self._uploads_ttl,
        )
        revived = MediaFile.deleted_at.is_not(None)
        stmt = stmt.on_conflict_do_update(
            index_elements=[MediaFile.sha256],
            set_={
                "last_accessed_at": func.now(),
                "expires_at": func.now() + self._uploads_ttl,
                "deleted_at": None,
                "size_bytes": stmt.excluded.size_bytes,
                "storage_key": stmt.excluded.storage_key,
                "content_type": case(
                    (revived, stmt.excluded.content_type), else_=MediaFile.content_type
                ),
                "original_name": case(
                    (revived, stmt.excluded.original_name), else_=MediaFile.original_name
                ),
            },
        )
        returning = stmt.returning(MediaFile.id, MediaFile.content_type, MediaFile.original_name)
        return (await session.execute(returning)).one()

    async def open_media(self, sha256: str) -> OpenedFile:
        """Open a live upload for streaming and record the access (extends its retention).

        The access time is written at most every ``touch_interval_s`` per file. Raises
        ``StorageKeyError`` (400) for a malformed digest, ``MediaNotFoundError`` (404).
        """
        upload_key(sha256)  # validates the digest before it reaches SQL or a path
        interval = timedelta(seconds=self.retention.touch_interval_s)
        live = (MediaFile.sha256 == sha256, MediaFile.deleted_at.is_(None))
        async with self.sessions.begin() as session:
            touched = await session.execute(
                update(MediaFile)
                .where(*live, MediaFile.last_accessed_at <= func.now() - interval)
                .values(last_accessed_at=func.now(), expires_at=func.now() + self._uploads_ttl)
                .returning(MediaFile.storage_key, MediaFile.size_bytes, MediaFile.content_type)
            )
            row = touched.one_or_none()
            if row is None:
                row = (
                    await session.execute(
                        select(
                            MediaFile.storage_key, MediaFile.size_bytes, MediaFile.content_type
                        ).where(*live)
                    )
                ).one_or_none()
        if row is None:
            raise MediaNotFoundError(f"no media {sha256}")
        return await self._open(row.storage_key, sha256, row.size_bytes, row.content_type)

    # ---- artifacts

    async def store_artifact(
        self,
        job_id: uuid.UUID,
        kind: str,
        ext: str,
        chunks: AsyncIterable[bytes],
        content_type: str | None = None,
        *,
        max_bytes: int | None = None,
    ) -> StoredArtifact:
        """Write ``artifacts/<today>/<job_id>/<kind>.<ext>`` and upsert its row.

        Storing the same job/kind/ext again on the same (UTC) day replaces the file
        atomically (if that COMMIT then fails, the row keeps the old size/sha256 until the
        next store: the one known gap). Raises ``JobNotFoundError`` for an unknown job,
        ``StorageKeyError`` for a bad kind/ext, plus the storage errors of ``register_upload``.
        """
        key = artifact_key(job_id, kind, ext, datetime.now(UTC).date())
        ttl = timedelta(days=self.retention.artifacts_days)
        ctype = clean_content_type(content_type)
        await self.check_identity()
        try:
            async with (
                self.storage.stage(chunks, max_bytes=max_bytes) as staged,
                self.sessions.begin() as session,
            ):
                await lock_key(session, key)
                stored = StoredArtifact(
                    id=uuid.uuid4(),
                    job_id=job_id,
                    kind=kind,
                    storage_key=key,
                    size_bytes=staged.size_bytes,
                    sha256=staged.sha256,
                    content_type=ctype,
                    expires_at=None,  # the row's is set by the database clock below
                )
                stmt = insert(Artifact).values({**asdict(stored), "expires_at": func.now() + ttl})
                stmt = stmt.on_conflict_do_update(
                    index_elements=[Artifact.storage_key],
                    set_={
                        "size_bytes": stmt.excluded.size_bytes,
                        "sha256": stmt.excluded.sha256,
                        "content_type": stmt.excluded.content_type,
                        "created_at": func.now(),
                        "expires_at": stmt.excluded.expires_at,
                        "deleted_at": None,
                    },
                )
                returning = stmt.returning(Artifact.id, Artifact.expires_at)
                row = (await session.execute(returning)).one()
                await self.storage.place(staged, key, replace=True)
        except IntegrityError as exc:
            if getattr(exc.orig, "sqlstate", None) == _FK_VIOLATION:
                raise JobNotFoundError(str(job_id)) from None
            raise
        return replace(stored, id=row.id, expires_at=row.expires_at)

    async def open_artifact(self, artifact_id: uuid.UUID) -> OpenedFile:
        """Open a live artifact for streaming; ``MediaNotFoundError`` when there is none."""
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(
                        Artifact.storage_key,
                        Artifact.sha256,
                        Artifact.size_bytes,
                        Artifact.content_type,
                    ).where(Artifact.id == artifact_id, Artifact.deleted_at.is_(None))
                )
            ).one_or_none()
        if row is None:
            raise MediaNotFoundError(f"no artifact {artifact_id}")
        return await self._open(row.storage_key, row.sha256, row.size_bytes, row.content_type)

    async def _open(self, key: str, sha256: str, size: int, content_type: str) -> OpenedFile:
        try:
            fd = await in_thread(self.storage.open_read, key)
        except StoredFileMissingError:
            # a live row whose file is gone: retention's "missing" policy will mark it
            raise MediaNotFoundError(f"file missing for {key}") from None
        return OpenedFile(key, sha256, size, content_type, self.storage, fd)
