"""A minimal HTTP/1.1 client: keep-alive connections and the request heads the driver sends."""

from __future__ import annotations

import asyncio
import contextlib

from bench.common import BenchError

BOUNDARY = b"ma-bench-7f3a9c"
WRITE_SLICE = 256 * 1024


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1; responses need a Content-Length."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, *body: bytes) -> tuple[int, bytes]:
        """Send ``head`` then the ``body`` pieces (big ones in slices, draining between)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(head)
        for piece in body:
            view = memoryview(piece)
            for start in range(0, len(view), WRITE_SLICE):
                self.writer.write(view[start : start + WRITE_SLICE])
                await self.writer.drain()
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, close = -1, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length < 0:
            raise BenchError("response without Content-Length")
        payload = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def get_head(port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n".encode()


async def get_status(port: int, path: str) -> int:
    conn = Connection(port)
    try:
        status, _ = await asyncio.wait_for(conn.request(get_head(port, path)), 5)
        return status
    finally:
        await conn.close()


def upload_parts(filename: str, content_type: str, analysis_type: str) -> tuple[bytes, bytes]:
    """The multipart framing around a file's bytes: (before, after)."""
    before = (
        b"--" + BOUNDARY + b"\r\n"
        b'content-disposition: form-data; name="analysis_type"\r\n\r\n'
        + analysis_type.encode()
        + b"\r\n--" + BOUNDARY + b"\r\n"
        b'content-disposition: form-data; name="file"; filename="' + filename.encode() + b'"\r\n'
        b"content-type: " + content_type.encode() + b"\r\n\r\n"
    )  # fmt: skip
    return before, b"\r\n--" + BOUNDARY + b"--\r\n"


def post_head(port: int, length: int) -> bytes:
    return (
        f"POST /analyses HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: multipart/form-data; boundary={BOUNDARY.decode()}\r\n"
        f"content-length: {length}\r\n\r\n"
    ).encode()
