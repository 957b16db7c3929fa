"""``OpenedFile``: a stored file open for streaming to a client, its fd closed exactly once."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from app_patch.storage import Storage


@dataclass
class OpenedFile:
    """An open file ready to stream; it stays readable even if retention unlinks it now.

    Iterate ``chunks()`` at most once; ``close()`` is idempotent and must run whatever happens
    to the response (``chunks()`` closes at its end, the HTTP layer closes in a ``finally``,
    so a client that leaves before the body is sent leaks no descriptor).
    """

    storage_key: str
    sha256: str
    size_bytes: int
    content_type: str
    _storage: Storage = field(repr=False)
    _fd: int = field(repr=False)
    _reading: asyncio.Future[bytes] | None = field(default=None, repr=False)

    async def chunks(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        size = chunk_size or self._storage.settings.chunk_bytes
        try:
            for _ in range(1 << 40):  # bounded: a chunk per iteration until EOF
                if self._fd < 0:
                    raise RuntimeError("file already consumed or closed")
                self._reading = asyncio.ensure_future(asyncio.to_thread(os.read, self._fd, size))
                data = await asyncio.shield(self._reading)
                if not data:
                    return
                yield data
        finally:
            self.close()

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close the fd now, or, while a read in a worker thread still uses it, right after
        that read: a descriptor number closed under a running read could be reused by another
        file or socket before the read happens."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        reading = self._reading
        if reading is not None and not reading.done():
            reading.add_done_callback(lambda done: _close_after(done, fd))
        else:
            os.close(fd)


def _close_after(read: asyncio.Future[bytes], fd: int) -> None:
    if not read.cancelled():
        read.exception()  # retrieved: the read's own failure is of no interest any more
    os.close(fd)
