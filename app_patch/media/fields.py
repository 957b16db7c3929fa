"""Client-sent media metadata made safe to keep: the content type and the original name."""

from __future__ import annotations

import re

DEFAULT_CONTENT_TYPE = "application/octet-stream"
_CONTENT_TYPE = re.compile(r"[\w.+-]{1,127}/[\w.+-]{1,127}(\s*;[\x20-\x7e]*)?")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")  # never kept in text fields


def clean_content_type(value: str | None) -> str:
    """The client's content type if it looks like ``type/subtype[; params]``, else a default."""
    if value and len(value) <= 255 and _CONTENT_TYPE.fullmatch(value.strip()):
        return value.strip()
    return DEFAULT_CONTENT_TYPE


def clean_original_name(value: str | None) -> str | None:
    """Metadata only (never part of a path): control characters dropped, length capped."""
    if not value:
        return None
    cleaned = CONTROL_CHARACTERS.sub("", value).strip()[:1024]
    return cleaned or None
