"""Real, light media analysis: hashes, sniffed type, image geometry, audio stream facts.

Each analysis type is a pure function of a stored file. A file that does not fit the
requested type (an "image" analysis of an MP3) fails the job with a readable error.

Uploaded bytes are hostile: Pillow, mutagen and filetype parse them, and their parsers raise
more than their documented errors on crafted or truncated input (``SyntaxError``,
``struct.error``, ``IndexError``, ``ValueError``...). Every library call is wrapped so that any
``Exception`` becomes an ``AnalysisError`` naming only the exception type (never the server
path or bytes), and ``run_analysis`` does the same for whatever slips through: a hostile file
fails its job, it never answers 500. Numbers taken from a file are kept only when finite and
in range, so a result always fits JSONB.
"""

from __future__ import annotations

import codecs
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filetype
import mutagen
from PIL import Image

ANALYZER_NAME = "media-analysis-reference"
ANALYZER_VERSION = "1.0.0"
"""Who analysed a file, stored with every result (the ``engine_name``/``engine_version`` columns
and response fields keep their published names)."""
Image.MAX_IMAGE_PIXELS = 64_000_000  # bigger is treated as a decompression bomb
SNIFF_BYTES = 4096  # magic numbers and the text check need no more than the head
_MAX_INT = 2**53  # beyond this a "sample rate" or "bitrate" is garbage (and not JSON-safe)


class AnalysisError(Exception):
    """The file cannot be analysed as asked; the message is the job's error."""


@dataclass(frozen=True)
class FileFacts:
    path: Path
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class AnalysisOutcome:
    result: dict[str, Any]
    summary: str
    duration_ms: float
    engine_name: str = ANALYZER_NAME
    engine_version: str = ANALYZER_VERSION


def _head(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(SNIFF_BYTES)


def sniff_content_type(path: Path) -> str:
    """MIME type from the file's first 4 KiB (never from the client's claim, never more)."""
    head = _head(path)
    try:
        kind = filetype.guess(head)
    except Exception as exc:
        raise AnalysisError(f"content type not recognised ({type(exc).__name__})") from None
    if kind is not None:
        return str(kind.mime)
    try:  # incremental: a multi-byte character cut at the 4 KiB mark is still text
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < SNIFF_BYTES)
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "text/plain"


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return round(number, 3) if math.isfinite(number) else None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= _MAX_INT else None


def _basic(facts: FileFacts) -> dict[str, Any]:
    return {
        "sha256": facts.sha256,
        "size_bytes": facts.size_bytes,
        "content_type": sniff_content_type(facts.path),
    }


def _image_details(path: Path) -> dict[str, Any]:
    try:
        with Image.open(path) as img:
            return {
                "width": _count(img.width),
                "height": _count(img.height),
                "format": img.format,
                "mode": img.mode,
                "frames": _count(getattr(img, "n_frames", 1)),
            }
    except Exception as exc:  # UnidentifiedImageError, DecompressionBombError, OSError and
        # whatever else a crafted file triggers; Pillow's message names the server path: omit it
        raise AnalysisError(f"not a readable image ({type(exc).__name__})") from None


def _audio_details(path: Path) -> dict[str, Any]:
    try:
        audio = mutagen.File(str(path))
    except Exception as exc:  # MutagenError and whatever else a crafted file triggers
        raise AnalysisError(f"not a readable audio file ({type(exc).__name__})") from None
    if audio is None or getattr(audio, "info", None) is None:
        raise AnalysisError("not a readable audio file: unknown container")
    info = audio.info
    try:
        mime = audio.mime
    except Exception:
        mime = None
    return {
        "codec": type(audio).__name__.lower(),
        "mime": str(mime[0]) if isinstance(mime, list) and mime else None,
        "duration_s": _finite(getattr(info, "length", 0.0)),
        "sample_rate": _count(getattr(info, "sample_rate", None)),
        "channels": _count(getattr(info, "channels", None)),
        "bitrate": _count(getattr(info, "bitrate", None)),
    }


def analyse_basic(facts: FileFacts) -> dict[str, Any]:
    return _basic(facts)


def analyse_image(facts: FileFacts) -> dict[str, Any]:
    return {**_basic(facts), "image": _image_details(facts.path)}


def analyse_audio(facts: FileFacts) -> dict[str, Any]:
    return {**_basic(facts), "audio": _audio_details(facts.path)}


def analyse_auto(facts: FileFacts) -> dict[str, Any]:
    """Everything that applies to this file; nothing fails for lack of a fit."""
    result = _basic(facts)
    family = result["content_type"].split("/")[0]
    if family == "image":
        result["image"] = _image_details(facts.path)
    elif family in {"audio", "video"}:
        with contextlib.suppress(AnalysisError):
            result["audio"] = _audio_details(facts.path)
    return result


ANALYSERS: dict[str, Callable[[FileFacts], dict[str, Any]]] = {
    "basic": analyse_basic,
    "image": analyse_image,
    "audio": analyse_audio,
    "auto": analyse_auto,
}
ANALYSIS_TYPES = tuple(sorted(ANALYSERS))


def _summary(result: dict[str, Any]) -> str:
    parts = [result["content_type"], f"{result['size_bytes']} bytes"]
    if "image" in result:
        parts.append(f"{result['image']['width']}x{result['image']['height']}")
    if "audio" in result:
        parts.append(f"{result['audio']['duration_s']} s {result['audio']['codec']}")
    return ", ".join(parts)


def run_analysis(analysis_type: str, facts: FileFacts) -> AnalysisOutcome:
    """Blocking; call it in a worker thread. Raises AnalysisError when the file does not fit,
    and for any other failure of the analysis (the last guard against hostile bytes)."""
    analyser = ANALYSERS[analysis_type]
    started = time.perf_counter()
    try:
        result = analyser(facts)
        summary = _summary(result)
    except AnalysisError:
        raise
    except Exception as exc:
        raise AnalysisError(f"analysis failed ({type(exc).__name__})") from None
    return AnalysisOutcome(
        result=result,
        summary=summary,
        duration_ms=(time.perf_counter() - started) * 1000,
    )
