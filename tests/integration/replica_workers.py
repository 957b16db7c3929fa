"""What one API replica does to the shared volume, as a separate process for the replica tests.

``python -m tests.integration.replica_workers <command> ...`` (run from the project root):

``replay URL STORAGE_ROOT GO``     wait for the file GO, then run the outbox replayer of an API
                                   process until the outbox is empty; prints a JSON report
``keys OUTBOX KEY N GO``           N rounds of deferring a job under one Idempotency-Key
                                   (entry, claim, withdraw, release) as concurrent requests do;
                                   prints how often a claim this process won was lost
``stage STORAGE_ROOT READY GO``    an upload in flight: a tmp file written and held open until
                                   GO appears; prints whether it survived everyone else
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from app_patch.breaker import Breaker
from app_patch.db import create_engine, create_session_factory, is_database_outage
from app_patch.media import MediaStore
from app_patch.outbox import Outbox, OutboxReplayer
from app_patch.settings import DatabaseSettings, RetentionSettings, StorageSettings
from app_patch.storage import Storage, write_durably

WAIT_S = 60


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    for _ in range(WAIT_S * 1000):
        if path.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.001)


async def replay(url: str, root: Path, go: Path) -> dict[str, object]:
    engine = create_engine(DatabaseSettings(pool_size=2, max_overflow=2), url)
    sessions = create_session_factory(engine)
    storage = await Storage.open(StorageSettings(root=root))  # what an API start does
    media = MediaStore(sessions, storage, RetentionSettings())
    breaker = Breaker("postgres", threshold=3, recovery_s=0.2, is_outage=is_database_outage)
    replayed: list[str] = []

    async def landed(job_id: uuid.UUID) -> None:
        replayed.append(str(job_id))

    replayer = OutboxReplayer(
        Outbox(storage.outbox_dir), sessions, breaker, media, interval_s=0.05, on_replayed=landed
    )
    wait_for(go)
    rounds = 0
    try:
        for _ in range(400):  # bounded: the outbox empties in a few rounds
            rounds += 1
            await replayer.drain_once()
            if not replayer.outbox.backlog():
                break
            await asyncio.sleep(0.02)
    finally:
        await engine.dispose()
    return {
        "replayed": replayed,
        "quarantined": replayer.quarantined_total,
        "rounds": rounds,
        "identity_checked": media.identity_checked,
    }


def keys(directory: Path, key: str, rounds: int, go: Path) -> dict[str, object]:
    outbox = Outbox(directory)
    wait_for(go)
    won = lost_after_win = 0
    for _ in range(rounds):
        job = uuid.uuid4()
        write_durably(directory / f"{job}.json", b"{}")  # the entry comes before its claim
        if outbox.claim_key(key, job, "fingerprint") is None:
            won += 1
            time.sleep(0.0002)  # the request answers while its claim stands
            held = outbox.key_claim(key)
            if held is None or held.job_id != job:
                lost_after_win += 1
        outbox.withdraw(job)  # replayed or given up: the entry goes, then its claim
        outbox.release_key(key, job)
    return {"won": won, "lost_after_win": lost_after_win}


async def stage(root: Path, ready: Path, go: Path) -> dict[str, object]:
    storage = await Storage.open(StorageSettings(root=root))

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"x" * 4096
        names = [p.name for p in storage.tmp_dir.glob("ma-*.part")]
        write_durably(ready, json.dumps(names).encode())
        await asyncio.to_thread(wait_for, go)
        yield b"y" * 4096

    async with storage.stage(slow_body()) as staged:
        survived = staged.path.exists() and os.fstat(staged.fd).st_nlink == 1
        return {"survived": survived, "size": staged.size_bytes, "name": staged.path.name}


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "replay":
        report = asyncio.run(replay(args[0], Path(args[1]), Path(args[2])))
    elif command == "keys":
        report = keys(Path(args[0]), args[1], int(args[2]), Path(args[3]))
    elif command == "stage":
        report = asyncio.run(stage(Path(args[0]), Path(args[1]), Path(args[2])))
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
