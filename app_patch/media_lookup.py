"""Cached reads of stored media by content hash (``GET /media/{sha256}``).

The upload path calls ``invalidate`` after it commits a ``media_files`` row; the retention CLI
drops the same keys (``Kind.media``) for the files a sweep deleted.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app_patch.cache import MEDIA_PLACEMENT, Kind
from app_patch.guarded_sessions import CachedService
from app_patch.models import MediaFile
from app_patch.schemas import MediaOut


class MediaLookup(CachedService):
    """A live (not deleted) media file's metadata, read through the cache."""

    async def get(self, sha256: str) -> MediaOut | None:
        """A live (not deleted) media file by content hash."""
        digest = sha256.lower()

        async def query(session: AsyncSession) -> MediaOut | None:
            row = await session.scalar(
                select(MediaFile).where(MediaFile.sha256 == digest, MediaFile.deleted_at.is_(None))
            )
            return MediaOut.model_validate(row) if row is not None else None

        async def load() -> MediaOut | None:
            return await self._db.read(query)

        return await self.cache.get_or_load(
            Kind.media, digest, MediaOut, load, lambda _: MEDIA_PLACEMENT
        )

    async def invalidate(self, sha256: str) -> None:
        """Call after changing or deleting a media_files row."""
        await self.cache.invalidate(Kind.media, sha256.lower())
