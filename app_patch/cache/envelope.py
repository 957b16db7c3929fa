"""The stored value: ``b"<rank>:<gen>:<orjson>"``; a tombstone is ``b"<rank>:<gen>:"``.

``gen`` grows with every write-through and invalidation of the key; ``rank`` orders
write-throughs (a finished job outranks a running one). The Lua side of the same format is
in ``app_patch.cache.client``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

ABSENT: Final = "-"  # the fill token of a key that held nothing at the miss


@dataclass(frozen=True)
class Envelope:
    rank: int
    gen: int
    body: bytes  # empty for a tombstone


def parse_envelope(raw: bytes) -> Envelope:
    parts = raw.split(b":", 2)
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        raise ValueError("not a cache envelope")
    return Envelope(int(parts[0]), int(parts[1]), parts[2])


def encode_body(value: BaseModel) -> bytes:
    return orjson.dumps(value.model_dump())


def decode(raw: bytes, model: type[M]) -> M:
    """The value in a stored envelope; ``ValueError`` for a tombstone or garbage."""
    body = parse_envelope(raw).body
    if not body:
        raise ValueError("tombstone")
    return model.model_validate_json(body)


def decode_hit(raw: bytes, model: type[M]) -> M | None:
    """The value of a well-formed, non-empty envelope; None for anything else (the slow path
    then reads the key again and deals with tombstones and garbage)."""
    first = raw.find(b":")
    second = raw.find(b":", first + 1) if first > 0 else -1
    if second < 0 or second + 1 == len(raw):
        return None
    if not (raw[:first].isdigit() and raw[first + 1 : second].isdigit()):
        return None
    try:
        return model.model_validate_json(raw[second + 1 :])
    except ValidationError:
        return None
