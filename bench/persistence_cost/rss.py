"""Peak RSS of an API process while many distinct 10 MiB files are uploaded at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass

import psutil

from bench.common import BenchError
from bench.persistence_cost.client import Connection, post_head, upload_parts
from bench.persistence_cost.servers import Served

BIG_UPLOAD_BYTES = 10 * 1024 * 1024
SAMPLE_S = 0.05
BIG_TIMEOUT_S = 300.0


@dataclass
class RssRun:
    idle_mib: float
    peak_mib: float
    samples: int
    wall_s: float
    statuses: Counter[int]
    errors: Counter[str]

    @property
    def growth_mib(self) -> float:
        return self.peak_mib - self.idle_mib


def rss_mib(proc: psutil.Process) -> float:
    return float(proc.memory_info().rss) / (1024 * 1024)


async def big_uploads(port: int, count: int) -> tuple[Counter[int], Counter[str]]:
    """``count`` distinct 10 MiB uploads at once, one connection each, all sent from one
    shared buffer (a distinct 32-byte head per file, so each is stored on its own)."""
    shared = os.urandom(BIG_UPLOAD_BYTES - 32)
    before, after = upload_parts("big.bin", "application/octet-stream", "basic")
    head = post_head(port, len(before) + BIG_UPLOAD_BYTES + len(after))
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()

    async def one(n: int) -> None:
        conn = Connection(port)
        unique = f"{n:031d}\n".encode()
        try:
            request = conn.request(head, before + unique, shared, after)
            status, _ = await asyncio.wait_for(request, BIG_TIMEOUT_S)
            statuses[status] += 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError, BenchError) as exc:
            errors[type(exc).__name__] += 1
        finally:
            await conn.close()

    await asyncio.gather(*(one(n) for n in range(count)))
    return statuses, errors


def measure_rss(server: Served, count: int) -> RssRun:
    """Idle RSS (median of 5 samples after 1 s of quiet), then the peak while ``count`` big
    uploads run, sampled every ``SAMPLE_S`` by a thread (bounded by the uploads' time cap)."""
    proc = psutil.Process(server.pid)
    time.sleep(1.0)
    quiet = []
    for _ in range(5):
        quiet.append(rss_mib(proc))
        time.sleep(SAMPLE_S)
    idle = statistics.median(quiet)
    peak = idle
    samples = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, samples
        for _ in range(int((BIG_TIMEOUT_S + 10) / SAMPLE_S)):
            if stop.is_set():
                return
            with contextlib.suppress(psutil.Error):
                peak = max(peak, rss_mib(proc))
                samples += 1
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    began = time.perf_counter()
    try:
        statuses, errors = asyncio.run(big_uploads(server.port, count))
    finally:
        wall = time.perf_counter() - began
        time.sleep(2 * SAMPLE_S)
        stop.set()
        sampler.join(5)
    return RssRun(idle, peak, samples, wall, statuses, errors)
