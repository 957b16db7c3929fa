"""Upload traffic under PostgreSQL kills: N_LOOPS loops upload distinct files while the
postmaster is SIGKILLed and restarted ROUNDS times; every answer and every dropped connection is
recorded with the phase ("up" or "down") it was sent in."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

import httpx

from app_patch.embedded import EmbeddedPostgres
from tests.integration.api.harness import describe, png_bytes, unique_text, upload
from tests.integration.api.postmaster_kill import Kill, kill_postmaster

N_LOOPS = 16
ROUNDS = 3
WARMUP_S = 1.0  # traffic before the first kill (later rounds: the previous round's tail)
DOWN_S = 2.0  # from the SIGKILL to the restart
UP_AFTER_RESTART_S = 2.0  # traffic after each restart
TRAFFIC_BUDGET_S = 90.0  # the whole chaos phase, loops included
MAX_UPLOADS_PER_LOOP = 2000  # bounds each loop; also keeps png seeds distinct (< 65536)
KEYED_LOOP_EVERY = 4  # every 4th loop sends an Idempotency-Key (a fresh one per upload)


@dataclass(frozen=True)
class Answer:
    loop: int
    seq: int
    phase: str  # "up" or "down" when the request was sent
    sent_at: float  # time.monotonic()
    status: int
    body: str
    seconds: float
    deferred_header: str | None
    described: str


@dataclass(frozen=True)
class Dropped:
    loop: int
    seq: int
    phase: str
    error: str
    seconds: float


@dataclass
class Traffic:
    phase: str = "up"
    answers: list[Answer] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)


@dataclass
class RoundTiming:
    kill: Kill
    down_s: float  # SIGKILL sent -> restart returned
    restart_s: float  # the restart() call alone
    restarted_at: float  # time.monotonic() when restart() returned


def content_for(loop: int, seq: int) -> tuple[bytes, str, str]:
    """Distinct bytes per upload: text for even loops, a small PNG for odd ones."""
    if loop % 2:
        return png_bytes(9, 7, seed=loop * MAX_UPLOADS_PER_LOOP + seq), "pixel.png", "image/png"
    return unique_text(f"kill-{loop}-{seq}"), "note.txt", "text/plain"


async def upload_loop(
    client: httpx.AsyncClient, loop: int, stop: asyncio.Event, traffic: Traffic
) -> None:
    for seq in range(MAX_UPLOADS_PER_LOOP):
        if stop.is_set():
            return
        content, filename, content_type = content_for(loop, seq)
        key = f"kill-{loop}-{seq}-{uuid.uuid4()}" if loop % KEYED_LOOP_EVERY == 0 else None
        phase = traffic.phase
        started = time.monotonic()
        try:
            response = await upload(
                client,
                content,
                analysis_type="basic",
                filename=filename,
                content_type=content_type,
                idempotency_key=key,
            )
        except httpx.TransportError as exc:  # connection dropped, reset, refused or timed out
            error = f"{type(exc).__name__}: {exc!r}"
            traffic.dropped.append(Dropped(loop, seq, phase, error, time.monotonic() - started))
            continue
        traffic.answers.append(
            Answer(
                loop=loop,
                seq=seq,
                phase=phase,
                sent_at=started,
                status=response.status_code,
                body=response.text,
                seconds=time.monotonic() - started,
                deferred_header=response.headers.get("X-History-Deferred"),
                described=describe(response),
            )
        )


async def chaos(pg: EmbeddedPostgres, traffic: Traffic, timings: list[RoundTiming]) -> None:
    await asyncio.sleep(WARMUP_S)
    for _ in range(ROUNDS):
        killed_at = time.monotonic()
        traffic.phase = "down"
        kill = await asyncio.to_thread(kill_postmaster, pg.data_dir)
        await asyncio.sleep(max(0.0, DOWN_S - (time.monotonic() - killed_at)))
        restart_started = time.monotonic()
        await asyncio.to_thread(pg.restart)
        restarted_at = time.monotonic()
        traffic.phase = "up"
        timings.append(
            RoundTiming(
                kill, restarted_at - killed_at, restarted_at - restart_started, restarted_at
            )
        )
        await asyncio.sleep(UP_AFTER_RESTART_S)


async def run_traffic(
    client: httpx.AsyncClient, pg: EmbeddedPostgres
) -> tuple[Traffic, list[RoundTiming]]:
    traffic = Traffic()
    timings: list[RoundTiming] = []
    stop = asyncio.Event()
    loops = [
        asyncio.create_task(upload_loop(client, i, stop, traffic), name=f"upload-{i}")
        for i in range(N_LOOPS)
    ]
    try:
        async with asyncio.timeout(TRAFFIC_BUDGET_S):
            try:
                await chaos(pg, traffic, timings)
            finally:
                stop.set()
            await asyncio.gather(*loops)
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
    return traffic, timings
