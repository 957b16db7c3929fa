"""Hostile media never answers 5xx: random, truncated and mutated PNG/JPEG/WAV/MP3 bytes.

Two layers, both driven by Hypothesis (derandomized, so a run is reproducible and bounded):
- the analysis function the app installs (``api.main.analyse``), for every analysis type:
  any outcome but a result or an ``AnalysisError`` (a failed job) fails the test;
- a smaller sample through the live HTTP API: every answer is 201 with a succeeded or failed
  job, never a 5xx.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from PIL import Image

from api.analysis import ANALYSIS_TYPES, SNIFF_BYTES, AnalysisError, sniff_content_type
from api.main import analyse
from tests.integration.api.harness import LiveApp, describe, fuzz_settings, png_bytes, wav_bytes

DIRECT_EXAMPLES = 2000  # files; each is analysed by every analysis type (~6 s)
HTTP_EXAMPLES = 80
HTTP_PARALLEL = 8
BUDGET_S = 180.0


def jpeg_bytes() -> bytes:
    img = Image.new("RGB", (48, 32), (10, 120, 230))
    img.putpixel((3, 4), (255, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def mp3_bytes(frames: int = 24) -> bytes:
    """An ID3v2 header and silent MPEG-1 Layer III frames (128 kbit/s, 44.1 kHz)."""
    header = bytes([0xFF, 0xFB, 0x90, 0x64])
    frame = header + bytes(144 * 128_000 // 44_100 - len(header))
    return b"ID3\x03\x00\x00\x00\x00\x00\x00" + frame * frames


SEEDS = {
    "png": png_bytes(31, 17, seed=5),
    "jpeg": jpeg_bytes(),
    "wav": wav_bytes(seconds=0.05),
    "mp3": mp3_bytes(),
}


def _with(seed: bytes, at: int, value: bytes) -> bytes:
    return seed[:at] + value + seed[at + len(value) :]


# Found by this fuzzer against the unguarded analysis (each was a 500): always replayed.
KNOWN_CRASHERS = [
    # IHDR length 13 -> 12: Pillow raises ValueError("Truncated IHDR chunk")
    _with(SEEDS["png"], 11, b"\x0c"),
    # ID3v2 "extended header" flag on a zero-sized tag: mutagen raises ValueError
    b"ID3\x03\x00\x40\x00\x00\x00\x00" + bytes(20) + SEEDS["mp3"][10:],
]


@st.composite
def hostile_media(draw: st.DrawFn) -> bytes:
    """Random bytes, a truncated seed, or a seed with bytes flipped, inserted or removed."""
    how = draw(st.sampled_from(["random", "truncated", "mutated", "mutated", "spliced"]))
    if how == "random":
        return draw(st.binary(min_size=1, max_size=2048))
    seed = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    if how == "truncated":
        return seed[: draw(st.integers(1, len(seed) - 1))]
    data = bytearray(seed)
    if how == "spliced":  # another seed's tail after this one's head
        other = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
        cut = draw(st.integers(1, len(data) - 1))
        return bytes(data[:cut]) + other[draw(st.integers(0, len(other) - 1)) :]
    for _ in range(draw(st.integers(1, 8))):
        # mostly in the first bytes, where the headers and lengths the parsers trust are
        reach = draw(st.sampled_from([64, 64, 512, len(data)]))
        at = draw(st.integers(0, min(reach, len(data)) - 1))
        match draw(st.sampled_from(["flip", "set", "zero4", "insert", "delete"])):
            case "flip":
                data[at] ^= 1 << draw(st.integers(0, 7))
            case "set":
                data[at] = draw(
                    st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))])
                )
            case "zero4":  # a length or size field set to 0 (or 0xFFFFFFFF)
                data[at : at + 4] = draw(st.sampled_from([b"\x00" * 4, b"\xff" * 4]))
            case "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            case _:
                del data[at : at + draw(st.integers(1, 16))]
    return bytes(data) or b"\x00"


def test_analysis_of_hostile_bytes_fails_the_job_never_crashes(tmp_path: Path) -> None:
    """Any exception but ``AnalysisError`` escaping the analysis would be a 500."""
    seen: Counter[str] = Counter()
    started = time.monotonic()

    @fuzz_settings(DIRECT_EXAMPLES)
    @given(data=hostile_media())
    @example(data=KNOWN_CRASHERS[0])
    @example(data=KNOWN_CRASHERS[1])
    def fuzz(data: bytes) -> None:
        path = tmp_path / "sample.bin"
        path.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        seen["files"] += 1
        for analysis_type in ANALYSIS_TYPES:
            try:
                outcome = analyse(analysis_type, path, sha, len(data))
            except AnalysisError as exc:
                assert str(exc), "a failed job needs a readable error"
                assert str(tmp_path) not in str(exc), "the error names a server path"
                seen[f"{analysis_type} failed"] += 1
                continue
            # the result is stored as JSONB: strictly JSON (no NaN/Infinity)
            json.dumps(outcome.result, allow_nan=False)
            seen[f"{analysis_type} ok"] += 1

    fuzz()
    elapsed = time.monotonic() - started
    print(f"{seen['files']} hostile files in {elapsed:.1f} s: {dict(sorted(seen.items()))}")
    assert seen["files"] >= DIRECT_EXAMPLES, seen
    assert elapsed < BUDGET_S, f"analysis of small hostile files took {elapsed:.0f} s"


def test_sniffing_reads_only_the_head(tmp_path: Path) -> None:
    text_head = "é" * (SNIFF_BYTES // 2)  # 2-byte characters: one is cut at the 4 KiB mark
    path = tmp_path / "text-then-binary"
    path.write_bytes(("x" + text_head).encode() + b"\xff\xfe\x00" * 1000)
    assert sniff_content_type(path) == "text/plain"  # what follows the head is never read
    path.write_bytes(b"\xff\xfe\x00" + b"x" * 10_000)
    assert sniff_content_type(path) == "application/octet-stream"
    path.write_bytes(SEEDS["png"])
    assert sniff_content_type(path) == "image/png"


def draw_http_samples(count: int) -> list[tuple[bytes, str]]:
    """Hypothesis-generated (bytes, analysis type) pairs for the HTTP layer."""
    samples: list[tuple[bytes, str]] = []
    lock = threading.Lock()

    @fuzz_settings(count)
    @given(data=hostile_media(), analysis_type=st.sampled_from(ANALYSIS_TYPES))
    def collect(data: bytes, analysis_type: str) -> None:
        with lock:
            samples.append((data, analysis_type))

    collect()
    return samples


@pytest.mark.usefixtures("clean_db")
async def test_hostile_uploads_never_answer_5xx(api: LiveApp, client: httpx.AsyncClient) -> None:
    crashers = [(data, kind) for data in KNOWN_CRASHERS for kind in ANALYSIS_TYPES]
    samples = crashers + await asyncio.to_thread(draw_http_samples, HTTP_EXAMPLES)
    gate = asyncio.Semaphore(HTTP_PARALLEL)

    async def one(i: int, data: bytes, analysis_type: str) -> httpx.Response:
        async with gate:
            return await client.post(
                "/analyses",
                files={"file": (f"hostile-{i}.bin", data, "application/octet-stream")},
                data={"analysis_type": analysis_type},
            )

    answers = await asyncio.wait_for(
        asyncio.gather(*(one(i, d, t) for i, (d, t) in enumerate(samples))), BUDGET_S
    )
    statuses = Counter(a.status_code for a in answers)
    jobs = Counter(a.json()["status"] for a in answers if a.status_code in (200, 201))
    print(f"{len(answers)} hostile uploads: statuses {dict(statuses)}, jobs {dict(jobs)}")
    server_errors = [describe(a) for a in answers if a.status_code >= 500]
    assert server_errors == [], "\n".join(server_errors[:10])
    assert set(statuses) <= {200, 201}, statuses  # same bytes + type twice: one job
    assert set(jobs) <= {"succeeded", "failed"}, jobs
    for answer in answers:
        job = answer.json()
        if job["status"] == "failed":
            assert job["error"], describe(answer)
