"""The load generator of the API benchmark, run as its own process (httpx + asyncio).

``python -m bench.load_driver --url http://127.0.0.1:PORT --ids ids.json --clients 200
--requests N --duration S --upload-every K`` prints one JSON object: counts by status and
kind, transport errors, latency percentiles (overall and per kind), wall time, throughput
and the driver's own CPU time. Every client is one coroutine with at most one request in
flight; the run stops after N requests or S seconds, whichever comes first (both bounded).
Request n is an upload when ``n % K == 0``, otherwise a GET of one of the given job ids.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.stats import percentile

CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    deferred: int = 0
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


def latency_summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    return {
        "n": float(len(ordered)),
        "p50_ms": percentile(ordered, 50),
        "p95_ms": percentile(ordered, 95),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1],
        "mean_ms": sum(ordered) / len(ordered),
    }


async def drive(
    url: str,
    job_ids: list[str],
    *,
    clients: int,
    requests: int,
    duration_s: float,
    upload_every: int,
    seed: int = 7,
) -> dict[str, Any]:
    rng = random.Random(seed)
    tally = Tally()
    # one client (one keep-alive connection) per simulated user: httpx's pool scans all its
    # connections for every request, so one shared 200-connection pool would measure httpx
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    users = [
        httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout, trust_env=False)
        for _ in range(clients)
    ]
    try:
        # warm-up (untimed): one GET per client, so every connection is open
        await asyncio.gather(
            *(c.get(f"/analyses/{job_ids[i % len(job_ids)]}") for i, c in enumerate(users))
        )
        counter = iter(range(requests))
        start = asyncio.Event()
        deadline = 0.0

        async def one(client: httpx.AsyncClient, n: int) -> None:
            upload = upload_every > 0 and n % upload_every == 0
            kind = "upload" if upload else "get"
            began = time.perf_counter()
            try:
                if upload:
                    body = f"bench upload {n} {uuid.uuid4()}\n".encode()
                    response = await client.post(
                        "/analyses",
                        files={"file": ("upload.txt", body, "text/plain")},
                        data={"analysis_type": "basic"},
                    )
                else:
                    job_id = job_ids[rng.randrange(len(job_ids))]
                    response = await client.get(f"/analyses/{job_id}")
            except httpx.HTTPError as exc:
                tally.errors[type(exc).__name__] += 1
                tally.latencies[f"{kind}_error"].append((time.perf_counter() - began) * 1000)
                return
            elapsed_ms = (time.perf_counter() - began) * 1000
            tally.statuses[f"{kind}:{response.status_code}"] += 1
            if response.headers.get("X-History-Deferred"):
                tally.deferred += 1
            if response.status_code < 400:
                tally.latencies[kind].append(elapsed_ms)
                tally.latencies["all"].append(elapsed_ms)

        async def user(client: httpx.AsyncClient) -> None:
            await start.wait()
            for n in counter:  # bounded by `requests`
                if time.perf_counter() > deadline:
                    return
                await one(client, n)

        workers = [asyncio.create_task(user(c)) for c in users]
        await asyncio.sleep(0.05)
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        began = time.perf_counter()
        deadline = began + duration_s
        start.set()
        await asyncio.gather(*workers)
        wall = time.perf_counter() - began
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        await asyncio.gather(*(c.aclose() for c in users))
    done = sum(tally.statuses.values())
    five_xx = sum(n for key, n in tally.statuses.items() if key.split(":")[1].startswith("5"))
    return {
        "clients": clients,
        "requests_planned": requests,
        "requests_done": done,
        "transport_errors": dict(tally.errors),
        "statuses": dict(tally.statuses),
        "status_5xx": five_xx,
        "deferred_to_outbox": tally.deferred,
        "wall_s": wall,
        "throughput_rps": done / wall if wall > 0 else 0.0,
        "stopped_by_deadline": done + sum(tally.errors.values()) < requests,
        "latency": {k: latency_summary(v) for k, v in tally.latencies.items()},
        "driver_cpu_s": (cpu_after.ru_utime - cpu_before.ru_utime)
        + (cpu_after.ru_stime - cpu_before.ru_stime),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load_driver")
    parser.add_argument("--url", required=True)
    parser.add_argument("--ids", required=True, help="JSON file with a list of job ids")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--upload-every", type=int, default=10)
    args = parser.parse_args(argv)
    if not args.url.startswith("http://127.0.0.1:"):
        parser.error("the driver only talks to 127.0.0.1")
    with open(args.ids, encoding="utf-8") as handle:
        job_ids = [str(i) for i in json.load(handle)]
    if not job_ids:
        parser.error("no job ids")
    result = asyncio.run(
        drive(
            args.url,
            job_ids,
            clients=args.clients,
            requests=args.requests,
            duration_s=args.duration,
            upload_every=args.upload_every,
        )
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
