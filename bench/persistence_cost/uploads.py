"""The requests the driver sends: distinct small PNG uploads and GETs of seeded jobs."""

from __future__ import annotations

import os
import struct
import zlib
from io import BytesIO

from PIL import Image

from bench.persistence_cost.client import get_head, post_head, upload_parts


def base_png(side: int = 64) -> bytes:
    noise = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = BytesIO()
    noise.save(out, format="PNG")
    return out.getvalue()


def distinct_png(base: bytes, n: int) -> bytes:
    """``base`` with a tEXt chunk naming ``n`` before IEND: a distinct, valid PNG."""
    data = b"bench\x00" + str(n).encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data
    chunk += struct.pack(">I", zlib.crc32(chunk[4:]))
    return base[:-12] + chunk + base[-12:]  # IEND is the last 12 bytes


class ImageUploads:
    """``POST /analyses`` request bytes of distinct small PNGs (image analysis)."""

    def __init__(self, port: int, first: int) -> None:
        self.port = port
        self.next = first
        self.base = base_png()
        self.before, self.after = upload_parts("bench.png", "image/png", "image")

    def __call__(self) -> tuple[bytes, bytes]:
        self.next += 1
        body = self.before + distinct_png(self.base, self.next) + self.after
        return post_head(self.port, len(body)), body


class GetJobs:
    """``GET /analyses/{id}`` request heads of the given jobs, in turn."""

    def __init__(self, port: int, ids: list[str]) -> None:
        self.heads = [get_head(port, f"/analyses/{job_id}") for job_id in ids]
        self.n = 0

    def __call__(self) -> tuple[bytes, bytes]:
        self.n += 1
        return self.heads[self.n % len(self.heads)], b""
