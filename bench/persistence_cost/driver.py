"""The driver: bounded runs of requests over keep-alive connections, timed per side."""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from bench.common import BenchError
from bench.persistence_cost.client import Connection, get_head
from bench.persistence_cost.servers import Served
from bench.persistence_cost.sizes import CLIENTS, Sizes
from bench.persistence_cost.uploads import GetJobs, ImageUploads
from bench.stats import percentile
from bench.uvicorn_process import process_cpu_s

REQUEST_TIMEOUT_S = 60.0


@dataclass
class Run:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    driver_cpu_s: float = 0.0
    stopped_by_deadline: bool = False

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def rps(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def pct(self, q: float) -> float | None:
        ordered = sorted(self.latencies_ms)
        return percentile(ordered, q) if ordered else None


Make = Callable[[], tuple[bytes, bytes]]


async def drive(
    port: int,
    make: Make,
    *,
    count: int,
    clients: int,
    cap_s: float,
    warm_path: str,
    keep_bodies: bool = False,
) -> Run:
    """``count`` requests (``make()`` each) over ``clients`` connections; at most ``cap_s``."""
    run = Run()
    conns = [Connection(port) for _ in range(clients)]
    try:
        warm = get_head(port, warm_path)  # untimed: every connection open and used once
        await asyncio.gather(*(c.request(warm) for c in conns))
        remaining = iter(range(count))
        deadline = 0.0

        async def client(conn: Connection) -> None:
            for _ in remaining:  # shared and bounded by `count`
                if time.perf_counter() > deadline:
                    run.stopped_by_deadline = True
                    return
                head, body = make()
                began = time.perf_counter()
                try:
                    status, payload = await asyncio.wait_for(
                        conn.request(head, body), REQUEST_TIMEOUT_S
                    )
                except (OSError, asyncio.IncompleteReadError, TimeoutError, BenchError) as exc:
                    run.errors[type(exc).__name__] += 1
                    await conn.close()
                    continue
                run.statuses[status] += 1
                if 200 <= status < 300:
                    run.latencies_ms.append((time.perf_counter() - began) * 1000)
                    if keep_bodies:
                        run.bodies.append(payload)

        cpu = resource.getrusage(resource.RUSAGE_SELF)
        began = time.perf_counter()
        deadline = began + cap_s
        await asyncio.gather(*(client(c) for c in conns))
        run.wall_s = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_SELF)
        run.driver_cpu_s = after.ru_utime - cpu.ru_utime + after.ru_stime - cpu.ru_stime
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return run


def timed(server: Served, make: Make, count: int, sizes: Sizes, warm_path: str) -> Run:
    before = process_cpu_s(server.pid)
    run = asyncio.run(
        drive(server.port, make, count=count, clients=CLIENTS, cap_s=sizes.time_cap_s,
              warm_path=warm_path)
    )  # fmt: skip
    run.server_cpu_s = process_cpu_s(server.pid) - before
    return run


def seed(server: Served, count: int) -> list[str]:
    """Upload ``count`` images (untimed); every job read back once. Returns the job ids."""
    run = asyncio.run(
        drive(server.port, ImageUploads(server.port, 10**9), count=count, clients=8,
              cap_s=120, warm_path="/analyses", keep_bodies=True)
    )  # fmt: skip
    if run.ok != count:
        raise BenchError(f"seeding {server.target}: {dict(run.statuses)} {dict(run.errors)}")
    ids = [str(orjson.loads(body)["id"]) for body in run.bodies]
    reads = GetJobs(server.port, ids)
    check = asyncio.run(
        drive(server.port, reads, count=count, clients=8, cap_s=60, warm_path="/health")
    )
    if check.ok != count:
        raise BenchError(f"seed reads on {server.target}: {dict(check.statuses)}")
    return ids
