"""The drill's one source stack with real uploads and artifacts, and its target, set up once
for the package (as often as when the drill was one module).

The modules run in name order, and ``test_full_restore`` must run first: its backup makes
the only set in the backups directory, and it restores that set into the still fresh target.
Each later module stops the stack that runs and starts the one it needs (the two never run at
once), and ``test_sigkilled_backup``'s ``--keep 2`` prunes the sets made before it. The
fixture stops both stacks at the end."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app_patch.db import create_engine, create_session_factory
from app_patch.media import MediaStore
from app_patch.settings import DatabaseSettings, RetentionSettings, StorageSettings
from app_patch.storage import Storage
from tests.db_fingerprint import fingerprint
from tests.integration.api.harness import png_bytes, unique_text, wav_bytes
from tests.integration.backup_drill.stacks import Drill, EmbeddedStack, live_files, upload


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40 + seed, 30), (seed * 40 % 256, 90, 160)).save(buffer, format="JPEG")
    return buffer.getvalue()


async def _artifacts(app_url: str, root: Path, jobs: list[str]) -> None:
    engine = create_engine(DatabaseSettings(pool_size=2, max_overflow=0), app_url)
    try:
        store = MediaStore(
            create_session_factory(engine), Storage(StorageSettings(root=root)), RetentionSettings()
        )

        async def chunks(body: bytes) -> AsyncIterator[bytes]:
            yield body

        for i, job in enumerate(jobs):
            report = f"report of {job} #{i}\n".encode() * 50
            await store.store_artifact(
                uuid.UUID(job), "report", "txt", chunks(report), "text/plain"
            )
    finally:
        await engine.dispose()


@pytest.fixture(scope="package")
def drill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    base = tmp_path_factory.mktemp("backup-drill")
    source = EmbeddedStack(base / "source")
    target = EmbeddedStack(base / "target")
    backups = base / "backups"
    source.up()
    try:
        jobs: list[str] = []
        with httpx.Client(base_url=source.api, timeout=60, trust_env=False) as client:
            for i in range(6):
                jobs.append(upload(client, png_bytes(seed=i + 1), f"p{i}.png", "image/png"))
                jobs.append(upload(client, _jpeg(i), f"j{i}.jpg", "image/jpeg"))
                jobs.append(upload(client, wav_bytes(0.2 + i / 10), f"w{i}.wav", "audio/wav"))
                jobs.append(upload(client, unique_text(f"t{i}"), f"t{i}.txt", "text/plain"))
            upload(client, png_bytes(seed=1), "again.png", "image/png")  # dedup: same file
        endpoints = source.endpoints()
        assert endpoints.app_database_url is not None
        asyncio.run(_artifacts(endpoints.app_database_url, source.storage, jobs[:5]))
        rows = fingerprint(endpoints.database_url)
        files = live_files(endpoints.database_url)
        assert rows["analysis_jobs"][0] == 25 and rows["media_files"][0] == 24
        assert rows["artifacts"][0] == 5 and len(files) == 29
        yield Drill(source, target, backups, rows, files)
    finally:
        source.down()
        target.down()
