"""The upload trust boundary over real HTTP: byte limits whatever the headers say (chunked
included), a streamed multipart form with one file and small fields, the concurrent-upload cap
and the free-space floor. Nothing a refused request sent may stay in storage.

Bodies are built by hand and streamed from generators (``multipart``), so httpx sends them
chunked, without a Content-Length, and the client side itself holds no more than one chunk.
The app runs in this process, so this process's RSS is the server's.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from app_patch.ingest import MAX_PARTS
from app_patch.settings import Settings
from app_patch.upload_gate import MULTIPART_OVERHEAD_BYTES
from tests.integration.api.harness import (
    LiveApp,
    describe,
    fresh_settings,
    job_rows,
    running_app,
    unique_text,
    upload,
)

pytestmark = pytest.mark.usefixtures("clean_db")

MiB = 1024 * 1024
BLOCK = b"\xab" * (64 * 1024)
RSS_SLACK_KIB = 8 * 1024  # "a few MiB": allocator noise, the parser's and staging's buffers


# --------------------------------------------------------------------------- helpers


Part = tuple[str, str | None, Iterable[bytes]]  # name, filename (None: a text field), data


def repeated(total: int, block: bytes = BLOCK) -> Iterator[bytes]:
    """``total`` bytes as one reused block: the client allocates nothing per chunk."""
    sent = 0
    for _ in range(total // len(block) + 1):
        if sent >= total:
            return
        piece = block if total - sent >= len(block) else block[: total - sent]
        sent += len(piece)
        yield piece


def field(name: str, value: str | bytes) -> Part:
    return (name, None, [value.encode() if isinstance(value, str) else value])


def file_part(data: bytes | Iterable[bytes], filename: str = "upload.bin") -> Part:
    return ("file", filename, [data] if isinstance(data, bytes) else data)


async def multipart(
    parts: Sequence[Part], boundary: str, *, pause_s: float = 0.0, epilogue: Iterable[bytes] = ()
) -> AsyncIterator[bytes]:
    """A multipart/form-data body, streamed part by part (``pause_s`` between chunks)."""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if filename is not None:
            head += "Content-Type: application/octet-stream\r\n"
        yield (head + "\r\n").encode()
        for chunk in data:
            if pause_s:
                await asyncio.sleep(pause_s)
            yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()
    for chunk in epilogue:
        yield chunk


async def post_stream(
    client: httpx.AsyncClient,
    parts: Sequence[Part],
    *,
    pause_s: float = 0.0,
    epilogue: Iterable[bytes] = (),
) -> httpx.Response:
    boundary = uuid.uuid4().hex
    return await client.post(
        "/analyses",
        content=multipart(parts, boundary, pause_s=pause_s, epilogue=epilogue),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )


def stored_files(root: Path, areas: Sequence[str] = ("uploads", "tmp")) -> list[Path]:
    return [p for area in areas for p in (root / area).rglob("*") if p.is_file()]


def memory_kib() -> dict[str, int]:
    status = Path("/proc/self/status").read_text()
    return {
        key: int(match.group(1))
        for key in ("VmRSS", "VmHWM")
        if (match := re.search(rf"^{key}:\s+(\d+) kB", status, re.M))
    }


def reset_peak() -> bool:
    """Resets VmHWM (Linux >= 4.0), so the peak of one request can be read afterwards."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def assert_refused(live: LiveApp, response: httpx.Response, status: int) -> None:
    assert response.status_code == status, describe(response)
    assert response.headers["content-type"].startswith("application/json"), describe(response)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and 0 < len(detail) < 200, describe(response)
    assert stored_files(live.storage_root) == [], "a refused upload left a file behind"
    assert await job_rows(live.db_url) == [], "a refused upload recorded a job"


def small_settings(
    migrated_url: str, redis_url: str, tmp_path: Path, max_upload_bytes: int
) -> Settings:
    return fresh_settings(
        db_url=migrated_url,
        redis_url=redis_url,
        data_dir=tmp_path,
        max_upload_bytes=max_upload_bytes,
    )


@pytest.fixture
async def one_mib(migrated_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[LiveApp]:
    """The app with a 1 MiB upload limit."""
    async with running_app(small_settings(migrated_url, redis_url, tmp_path, MiB)) as live:
        yield live


# --------------------------------------------------------------------------- byte limits


async def test_chunked_upload_past_the_limit_is_413_without_spooling(one_mib: LiveApp) -> None:
    """20 MiB sent chunked (no Content-Length) against a 1 MiB limit."""
    async with one_mib.client() as client:
        warm = await upload(client, unique_text("warm-up"))  # imports, pools, first analysis
        assert warm.status_code == 201, describe(warm)
        for path in stored_files(one_mib.storage_root):
            path.unlink()
        await asyncio.sleep(0.2)
        idle = memory_kib()
        peak_measured = reset_peak()

        response = await post_stream(
            client, [field("analysis_type", "basic"), file_part(repeated(20 * MiB))]
        )

        after = memory_kib()
        print(f"idle {idle}, after {after}, peak reset: {peak_measured}")
        assert response.status_code == 413, describe(response)
        assert "limit" in response.json()["detail"]
        assert stored_files(one_mib.storage_root) == [], "the refused upload left a file"
        assert len(await job_rows(one_mib.db_url)) == 1  # the warm-up only
        growth = (after["VmHWM"] if peak_measured else after["VmRSS"]) - idle["VmRSS"]
        assert growth < RSS_SLACK_KIB, f"RSS grew {growth} KiB for a refused upload"


async def test_fields_after_an_oversize_file_are_413_too(one_mib: LiveApp) -> None:
    async with one_mib.client() as client:
        response = await post_stream(
            client,
            [file_part(repeated(3 * MiB)), field("analysis_type", "basic")],
        )
        await assert_refused(one_mib, response, 413)


async def test_bytes_past_the_last_part_count_against_the_limit(one_mib: LiveApp) -> None:
    """A small file followed by a huge epilogue: only the ASGI byte count can see it."""
    async with one_mib.client() as client:
        response = await post_stream(
            client,
            [file_part(b"small file")],
            epilogue=repeated(MiB + MULTIPART_OVERHEAD_BYTES + 1),
        )
        await assert_refused(one_mib, response, 413)
        still_fine = await upload(client, b"z" * MiB)
        assert still_fine.status_code == 201, describe(still_fine)


async def test_300_parts_are_refused_early(api: LiveApp, client: httpx.AsyncClient) -> None:
    """The observed attack: 300 parts of 1 MB each (300 MB chunked) was accepted."""
    await asyncio.sleep(0.2)
    idle = memory_kib()
    peak_measured = reset_peak()
    big = [(f"note{i}", f"n{i}.bin" if i % 2 else None, repeated(1_000_000)) for i in range(299)]
    response = await post_stream(client, [file_part(unique_text("many")), *big])
    after = memory_kib()
    print(f"300 x 1 MB: idle {idle}, after {after}")
    assert 400 <= response.status_code < 500, describe(response)
    await assert_refused(api, response, response.status_code)
    growth = (after["VmHWM"] if peak_measured else after["VmRSS"]) - idle["VmRSS"]
    assert growth < RSS_SLACK_KIB, f"RSS grew {growth} KiB for a refused upload"

    small = [field(f"note{i}", "x") for i in range(299)]
    many = await post_stream(client, [file_part(unique_text("many")), *small])
    await assert_refused(api, many, 413)
    assert str(MAX_PARTS) in many.json()["detail"]


# --------------------------------------------------------------------------- form rules


async def test_two_file_parts_are_422(api: LiveApp, client: httpx.AsyncClient) -> None:
    twice = await post_stream(client, [file_part(unique_text("a")), file_part(unique_text("b"))])
    await assert_refused(api, twice, 422)
    other_name = await post_stream(
        client, [file_part(unique_text("a")), ("attachment", "b.bin", [unique_text("b")])]
    )
    await assert_refused(api, other_name, 422)
    with_httpx = await client.post(
        "/analyses",
        files=[("file", ("a.bin", unique_text("a"))), ("file", ("b.bin", unique_text("b")))],
    )
    await assert_refused(api, with_httpx, 422)


async def test_fields_may_follow_the_file(api: LiveApp, client: httpx.AsyncClient) -> None:
    content = unique_text("fields last")
    response = await post_stream(
        client,
        [
            file_part(content, filename="notes.txt"),
            field("analysis_type", "basic"),
            field("client_ref", "after-the-file"),
            field("comment", "unknown text fields are ignored"),
        ],
    )
    assert response.status_code == 201, describe(response)
    job = response.json()
    assert job["analysis_type"] == "basic" and job["client_ref"] == "after-the-file"
    assert job["result"]["result"]["size_bytes"] == len(content)
    stored = stored_files(api.storage_root, ["uploads"])
    assert len(stored) == 1 and stored[0].read_bytes() == content


@pytest.mark.parametrize("fields_first", [True, False])
@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ([field("analysis_type", "video-magic")], "unknown type"),
        ([field("client_ref", "r" * 256)], "client_ref over 255"),
        ([field("client_ref", "bell\x07")], "control character"),
        ([field("client_ref", b"\xff\xfe")], "not UTF-8"),
        ([field("client_ref", "x" * 5000)], "field over the 1 KiB cap"),
        ([field("analysis_type", "basic"), field("analysis_type", "auto")], "repeated field"),
        ([field("note", "y" * 5000)], "unknown field over the cap"),
    ],
)
async def test_bad_fields_are_422_in_either_order(
    api: LiveApp, client: httpx.AsyncClient, fields: list[Part], why: str, fields_first: bool
) -> None:
    file = file_part(unique_text("bad fields"))
    parts = [*fields, file] if fields_first else [file, *fields]
    response = await post_stream(client, parts)
    await assert_refused(api, response, 422)
    assert "video-magic" not in response.text and "rrrr" not in response.text, why


async def test_malformed_bodies_are_4xx(api: LiveApp, client: httpx.AsyncClient) -> None:
    boundary = "b" * 32
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    truncated = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
        "no closing boundary"
    ).encode()
    garbage = b"\x00\x01 not multipart at all"
    for body in (truncated, garbage, b""):
        response = await client.post("/analyses", content=body, headers=headers)
        await assert_refused(api, response, 400)
    no_boundary = await client.post(
        "/analyses", content=b"x", headers={"Content-Type": "multipart/form-data"}
    )
    await assert_refused(api, no_boundary, 422)
    no_file = await post_stream(client, [field("analysis_type", "basic")])
    await assert_refused(api, no_file, 422)


# --------------------------------------------------------------------------- capacity


async def test_concurrent_uploads_over_the_cap_get_503(
    migrated_url: str, redis_url: str, tmp_path: Path
) -> None:
    settings = small_settings(migrated_url, redis_url, tmp_path, 8 * MiB)
    settings.api = settings.api.model_copy(update={"max_concurrent_uploads": 2})
    async with running_app(settings) as live, live.client() as client:
        # each upload trickles 16 chunks 0.1 s apart: ~1.6 s holding its slot
        answers = await asyncio.gather(
            *(
                post_stream(
                    client,
                    [file_part([unique_text(f"slow-{i}-{n}") for n in range(16)])],
                    pause_s=0.1,
                )
                for i in range(8)
            )
        )
        statuses = sorted(a.status_code for a in answers)
        print(f"8 uploads against a cap of 2: {statuses}")
        busy = [a for a in answers if a.status_code == 503]
        assert busy, statuses
        for answer in busy:
            assert answer.headers.get("retry-after", "").isdigit(), describe(answer)
            assert "retry" in answer.json()["detail"]
        others = [a for a in answers if a.status_code != 503]
        assert others and all(a.status_code == 201 for a in others), statuses
        assert len(await job_rows(live.db_url)) == len(others)
        assert stored_files(live.storage_root, ["tmp"]) == [], "a refused upload left a file"

        after = await upload(client, unique_text("slots released"))
        assert after.status_code == 201, describe(after)


async def test_free_space_floor_is_507_before_writing(
    migrated_url: str, redis_url: str, tmp_path: Path
) -> None:
    settings = small_settings(migrated_url, redis_url, tmp_path, 8 * MiB)
    settings.storage = settings.storage.model_copy(update={"min_free_bytes": 1 << 62})
    async with running_app(settings) as live, live.client() as client:
        sized = await upload(client, unique_text("no room"))
        await assert_refused(live, sized, 507)
        chunked = await post_stream(client, [file_part(repeated(2 * MiB))])
        await assert_refused(live, chunked, 507)
        assert "free space" in chunked.json()["detail"]
