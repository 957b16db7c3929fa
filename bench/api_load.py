"""200 concurrent clients on the API (pool of 20 + 30 = 50 connections), uvicorn in a subprocess.

The API is served exactly as the container serves it (``uvicorn``, one worker, access log on,
JSON logs, default settings: pool 20 + 30, pool timeout 30 s), on 127.0.0.1, configured through
the environment to use the benchmark's PostgreSQL, Redis and a scratch storage root. It is
wrapped by ``bench.api_server.Counting``, which counts the exceptions that escape the app
(pool timeouts separately) and the pool's peak checked-out connections.

Seeding (untimed): jobs uploaded through the API, so their entries are in the cache. Then each
repetition runs ``bench.load_driver`` in its own process: 200 clients, a bounded number of
requests and a time cap; 1 in ``upload_every`` requests is an upload (``POST /analyses``: a new
file, stored, analysed, 3 history transactions), the others ``GET /analyses/{id}`` of the
seeded (cached) jobs.

Limit: the same driver against ``bench.api_server.bare`` (a framework-free ASGI app answering
the same routes with a stored job's bytes) on the same uvicorn: the HTTP stack's ceiling here.
Both servers run side by side and the repetitions alternate between them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from app_patch.settings import PROJECT_ROOT
from bench.api_server import BARE_BODY_ENV, STATS_PATH
from bench.common import BenchError, tail
from bench.env import BenchEnv
from bench.report import BenchResult, Check, Ratio, Series
from infra.loopback import free_port

NAME = "api_load"
TITLE = "API under 200 concurrent clients (pool 20+30)"
CLIENTS = 200
Role = Literal["ours", "limit", "context"]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Sizes:
    seeds: int
    requests: int
    duration_s: float
    upload_every: int
    repetitions: int


QUICK = Sizes(seeds=40, requests=2000, duration_s=20, upload_every=10, repetitions=2)
FULL = Sizes(seeds=200, requests=12000, duration_s=90, upload_every=10, repetitions=3)


def _clock_ticks() -> int:
    return int(os.sysconf("SC_CLK_TCK"))


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (and its reaped children's are not included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _clock_ticks()


class UvicornProcess:
    """``uvicorn bench.api_server:app`` on 127.0.0.1 in its own process group."""

    def __init__(self, env: dict[str, str], log_path: Path, kind: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.kind = kind
        self.log_path = log_path
        self.env = {**env, "MA_BENCH_APP": kind}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            sys.executable, "-m", "uvicorn", "bench.api_server:app",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                args,
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        ready = "/health/ready" if self.kind == "real" else "/health"
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(base_url=self.url, timeout=5, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BenchError(f"uvicorn ({self.kind}) exited: {self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(ready).status_code == 200:
                        return
                time.sleep(0.2)
        raise BenchError(f"uvicorn ({self.kind}) not ready in {START_TIMEOUT_S:.0f} s")

    def log_tail(self) -> str:
        try:
            return tail(self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # uvicorn: graceful shutdown, lifespan closes
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def stats(self, reset_peak: bool = False) -> dict[str, Any]:
        with httpx.Client(base_url=self.url, timeout=10, trust_env=False) as client:
            response = client.get(STATS_PATH, params={"reset": "1"} if reset_peak else None)
            response.raise_for_status()
            data: dict[str, Any] = response.json()
            return data

    def metrics_text(self) -> str:
        with httpx.Client(base_url=self.url, timeout=10, trust_env=False) as client:
            response = client.get("/metrics")
            return response.text if response.status_code == 200 else ""


@contextlib.contextmanager
def servers(env: BenchEnv, db_url: str) -> Iterator[tuple[UvicornProcess, UvicornProcess, Path]]:
    scratch = env.scratch_dir("api")
    server_env = {
        **os.environ,
        "MA_DB_URL": db_url,
        "MA_REDIS_URL": env.redis_url,
        "MA_STORAGE_ROOT": str(scratch / "storage"),
        "MA_DATA_DIR": str(scratch / "data"),
        "MA_API_LOG_JSON": "true",  # as in the container
        # throughput, not load shedding, is measured: every client may upload at once
        "MA_API_MAX_CONCURRENT_UPLOADS": str(CLIENTS),
        "PYTHONUNBUFFERED": "0",
    }
    for name in ("DATABASE_URL", "REDIS_URL"):
        server_env.pop(name, None)
    real = UvicornProcess(server_env, scratch / "uvicorn-real.log", "real")
    bare = UvicornProcess(server_env, scratch / "uvicorn-bare.log", "bare")
    try:
        real.start()
        yield real, bare, scratch
    finally:
        real.stop()
        bare.stop()


def seed_jobs(server: UvicornProcess, count: int) -> tuple[list[str], bytes]:
    """Upload ``count`` files through the API; returns the job ids and one job's JSON bytes."""
    ids: list[str] = []
    with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as client:
        for i in range(count):
            content = f"bench seed {i} {uuid.uuid4()}\n".encode()
            response = client.post(
                "/analyses",
                files={"file": ("seed.txt", content, "text/plain")},
                data={"analysis_type": "basic"},
            )
            if response.status_code != 201:
                raise BenchError(f"seed upload -> {response.status_code}: {response.text[:300]}")
            ids.append(response.json()["id"])
        sample = b""
        for job_id in ids:  # every seeded job read once: the cache is warm
            response = client.get(f"/analyses/{job_id}")
            if response.status_code != 200:
                raise BenchError(f"seed read -> {response.status_code}: {response.text[:300]}")
            sample = response.content
    return ids, sample


def run_driver(server: UvicornProcess, ids_file: Path, sizes: Sizes) -> dict[str, Any]:
    args = [
        sys.executable, "-m", "bench.load_driver", "--url", server.url, "--ids", str(ids_file),
        "--clients", str(CLIENTS), "--requests", str(sizes.requests),
        "--duration", str(sizes.duration_s), "--upload-every", str(sizes.upload_every),
    ]  # fmt: skip
    cpu_before = process_cpu_s(server.pid)
    done = subprocess.run(
        args,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=sizes.duration_s + 180,
        check=False,
    )
    cpu_after = process_cpu_s(server.pid)
    if done.returncode != 0:
        raise BenchError(f"load driver failed: {tail(done.stderr)}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["server_cpu_s"] = cpu_after - cpu_before
    return result


def timeout_counters(metrics: str) -> dict[str, float]:
    """Non-zero samples of counters whose family name mentions a timeout (Prometheus text)."""
    families: set[str] = set()
    for line in metrics.splitlines():
        parts = line.split()
        is_counter = len(parts) == 4 and parts[:2] == ["#", "TYPE"] and parts[3] == "counter"
        if is_counter and "timeout" in parts[2]:
            families.add(parts[2])
    found: dict[str, float] = {}
    for line in metrics.splitlines():
        if not line or line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        name = sample.split("{", 1)[0]
        if name in families or name.removesuffix("_total") in families:
            with contextlib.suppress(ValueError):
                if float(value):
                    found[sample] = float(value)
    return found


def _lat(result: dict[str, Any], kind: str, key: str) -> float | None:
    value = result.get("latency", {}).get(kind, {}).get(key)
    return float(value) if value is not None else None


def run(env: BenchEnv, quick: bool) -> BenchResult:
    sizes = QUICK if quick else FULL
    db_url = env.create_database("api")
    ours: list[dict[str, Any]] = []
    limit: list[dict[str, Any]] = []
    stats_before: dict[str, Any] = {}
    stats_after: dict[str, Any] = {}
    metrics_timeouts: dict[str, float] = {}
    pool_peaks: list[float] = []
    with servers(env, db_url) as (real, bare, scratch):
        ids, sample = seed_jobs(real, sizes.seeds)
        ids_file = scratch / "ids.json"
        ids_file.write_text(json.dumps(ids), encoding="utf-8")
        bare.env[BARE_BODY_ENV] = sample.decode()
        bare.start()
        stats_before = real.stats()
        for rep in range(sizes.repetitions):
            order = [(real, ours), (bare, limit)]
            for server, sink in order if rep % 2 == 0 else reversed(order):
                before = server.stats(reset_peak=True) if server is real else {}
                sink.append(run_driver(server, ids_file, sizes))
                if server is real:
                    after = server.stats()
                    pool_peaks.append(float(after.get("pool_peak_checked_out", 0)))
                    sink[-1]["pool_timeouts"] = after["pool_timeouts"] - before["pool_timeouts"]
        stats_after = real.stats()
        metrics_timeouts = timeout_counters(real.metrics_text())
        server_log = real.log_tail()
    env.drop_database(db_url)

    def series(key: str, kind: str, stat: str, label: str, role: Role = "ours") -> Series:
        source = limit if role == "limit" else ours
        values = [v for r in source if (v := _lat(r, kind, stat)) is not None]
        return Series(key, label, "ms", values, role=role, better="lower")

    five_xx = sum(int(r["status_5xx"]) for r in ours)
    transport = sum(sum(r["transport_errors"].values()) for r in ours)
    deferred = sum(int(r["deferred_to_outbox"]) for r in ours)
    pool_timeouts = sum(int(r["pool_timeouts"]) for r in ours)
    exceptions = {
        k: v - stats_before.get("exceptions", {}).get(k, 0)
        for k, v in stats_after.get("exceptions", {}).items()
    }
    truncated = [i for i, r in enumerate(ours) if r["stopped_by_deadline"]]
    result = BenchResult(
        name=NAME,
        title=TITLE,
        series=[
            Series(
                "rps",
                "ours: throughput (GET + uploads)",
                "req/s",
                [r["throughput_rps"] for r in ours],
                note=f"{CLIENTS} clients",
            ),
            Series(
                "bare_rps",
                "bare ASGI app, same uvicorn + driver",
                "req/s",
                [r["throughput_rps"] for r in limit],
                role="limit",
            ),
            series("p50", "all", "p50_ms", "ours: p50 latency"),
            series("bare_p50", "all", "p50_ms", "bare ASGI app: p50 latency", "limit"),
            series("p95", "all", "p95_ms", "ours: p95 latency"),
            series("p99", "all", "p99_ms", "ours: p99 latency"),
            series("bare_p99", "all", "p99_ms", "bare ASGI app: p99 latency", "limit"),
            series("get_p50", "get", "p50_ms", "ours: GET /analyses/{id} p50", "context"),
            series("get_p99", "get", "p99_ms", "ours: GET /analyses/{id} p99", "context"),
            series("upload_p50", "upload", "p50_ms", "ours: POST /analyses p50", "context"),
            series("upload_p99", "upload", "p99_ms", "ours: POST /analyses p99", "context"),
            Series(
                "server_cpu",
                "ours: API process CPU",
                "% of 1 core",
                [100 * r["server_cpu_s"] / r["wall_s"] for r in ours],
                role="context",
                better="lower",
            ),
            Series(
                "driver_cpu",
                "load driver process CPU",
                "% of 1 core",
                [100 * r["driver_cpu_s"] / r["wall_s"] for r in ours],
                role="context",
                better="lower",
            ),
            Series(
                "pool_peak",
                "ours: peak pool connections checked out",
                "conns",
                pool_peaks,
                role="context",
                better="lower",
                note="of 50",
            ),
        ],
        ratios=[Ratio("rps", "bare_rps"), Ratio("p50", "bare_p50"), Ratio("p99", "bare_p99")],
        checks=[
            Check("pool timeouts", pool_timeouts, "= 0", pool_timeouts == 0),
            Check("5xx responses", five_xx, "= 0", five_xx == 0),
            Check("transport errors (client side)", transport, "= 0", transport == 0),
            Check("uploads deferred to the outbox", deferred, "= 0", deferred == 0),
            Check(
                "timeout counters in /metrics",
                sum(metrics_timeouts.values()),
                "= 0",
                not metrics_timeouts,
            ),
        ],
        params={
            "clients": CLIENTS,
            "requests_per_rep": sizes.requests,
            "time_cap_s": sizes.duration_s,
            "uploads": f"1 in {sizes.upload_every}",
            "seeded_jobs": sizes.seeds,
            "pool": "20 + 30 overflow, timeout 30 s",
            "repetitions": sizes.repetitions,
        },
        notes=[
            "uvicorn bench.api_server:app --host 127.0.0.1 --workers 1 (access log on, JSON "
            "logs to a file); the driver is a separate process on the same 2-core machine, "
            "so both compete with PostgreSQL and Redis for CPU.",
            "Percentiles are over successful responses of each repetition (nearest rank); "
            "the table shows their median, min and max over the repetitions.",
            f"Status counts per repetition: {[r['statuses'] for r in ours]}.",
        ],
    )
    if exceptions:
        result.notes.append(f"Exceptions that escaped the app: {exceptions}.")
    if truncated:
        result.notes.append(f"Repetitions {truncated} hit the time cap before all requests.")
    if metrics_timeouts:
        result.notes.append(f"/metrics timeout counters: {metrics_timeouts}.")
    if five_xx or transport:
        result.notes.append(f"Server log tail: {server_log[-1500:]}")
    return result
