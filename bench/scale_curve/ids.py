"""The ids of seeded rows: distinct, spread like uuid4, recomputable from the row's index."""

from __future__ import annotations

import hashlib
import uuid

_ID_STEP = 0x9E3779B97F4A7C15F39CC0605CEDC835  # odd, ~2^128/phi: a scrambled, unique sequence
_SALTS = {"job": 0x1F, "result": 0x2E, "media": 0x3D}
_MASK = (1 << 128) - 1
_VERSION_CLEAR = _MASK ^ (0xF000 << 64) ^ (0xC000 << 48)
_VERSION_SET = 0x4000 << 64 | 0x8000 << 48


def seq_uuid_text(kind: str, index: int) -> str:
    """The id of the ``index``-th row of a kind: distinct, spread like uuid4, recomputable."""
    value = ((index << 8 | _SALTS[kind]) * _ID_STEP) & _MASK
    value = value & _VERSION_CLEAR | _VERSION_SET  # what uuid.UUID(int=..., version=4) does
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def seq_uuid(kind: str, index: int) -> uuid.UUID:
    return uuid.UUID(seq_uuid_text(kind, index))


def media_sha(index: int) -> str:
    return hashlib.sha256(f"scale-curve:{index}".encode()).hexdigest()
