"""Real, light media analysis: hashes, sniffed type, image geometry, audio stream facts.

Each analysis type is a pure function of a stored file. A file that does not fit the
requested type (an "image" analysis of an MP3) fails the job with a readable error.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filetype
import mutagen
from PIL import Image, UnidentifiedImageError

ENGINE_NAME = "media-analysis-reference"
ENGINE_VERSION = "1.0.0"
Image.MAX_IMAGE_PIXELS = 64_000_000  # bigger is treated as a decompression bomb


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
    engine_name: str = ENGINE_NAME
    engine_version: str = ENGINE_VERSION


def sniff_content_type(path: Path) -> str:
    """MIME type from the file's magic bytes (never from the client's claim)."""
    kind = filetype.guess(str(path))
    if kind is not None:
        return str(kind.mime)
    head = path.read_bytes()[:4096] if path.stat().st_size else b""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "text/plain"


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
                "width": img.width,
                "height": img.height,
                "format": img.format,
                "mode": img.mode,
                "frames": getattr(img, "n_frames", 1),
            }
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
        # Pillow's message names the file's path on the server: keep it out of the job
        raise AnalysisError(f"not a readable image ({type(exc).__name__})") from None


def _audio_details(path: Path) -> dict[str, Any]:
    try:
        audio = mutagen.File(str(path))
    except mutagen.MutagenError as exc:
        raise AnalysisError(f"not a readable audio file ({type(exc).__name__})") from None
    if audio is None or getattr(audio, "info", None) is None:
        raise AnalysisError("not a readable audio file: unknown container")
    info = audio.info
    return {
        "codec": type(audio).__name__.lower(),
        "mime": (audio.mime or [None])[0],
        "duration_s": round(float(getattr(info, "length", 0.0)), 3),
        "sample_rate": getattr(info, "sample_rate", None),
        "channels": getattr(info, "channels", None),
        "bitrate": getattr(info, "bitrate", None),
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
    """Blocking; call it in a worker thread. Raises AnalysisError when the file does not fit."""
    analyser = ANALYSERS[analysis_type]
    started = time.perf_counter()
    result = analyser(facts)
    return AnalysisOutcome(
        result=result,
        summary=_summary(result),
        duration_ms=(time.perf_counter() - started) * 1000,
    )
