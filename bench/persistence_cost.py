"""The cost of persistence, end to end: the API with the kit vs the same API without it.

Both sides run under the same uvicorn (one worker, 127.0.0.1, default loop and HTTP parser,
access log on) in their own process: ``api.main:app`` (the kit, configured as ``api_load``
does: the benchmark's PostgreSQL and Redis, a scratch storage root, JSON logs) and
``bench.bare_api:app`` (the same FastAPI routes, streamed form and analysis code; the upload
goes to a temp file that is deleted, jobs are kept in a dict). The driver runs in this
process: ``CLIENTS`` keep-alive connections speaking plain HTTP/1.1 over asyncio streams
(a few microseconds of client CPU per request, so that on a small machine the client does not
set the ceiling), every loop bounded by a request count and a time cap.

1. ``POST /analyses``: a 64x64 PNG (~12 KB, every one distinct, ``analysis_type=image``).
   Ours stages, analyses, stores and records it (3 statements in 2 transactions + Redis).
2. ``GET /analyses/{id}`` of jobs seeded through the same API: ours is a Redis cache hit
   (write-through at upload), the bare app answers the same ``JobOut`` from memory.
   Throughput ratios ours / bare with targets (POST 70 %, GET 60 %) and p50/p99 per side;
   the sides alternate within each repetition.
3. Peak RSS of the kit's API process (psutil, every ``SAMPLE_S``) while ``big_uploads``
   distinct 10 MiB files are uploaded at once, against its idle RSS just before; the bare
   app's growth under the same load is shown for context.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import orjson
import psutil  # type: ignore[import-untyped]  # no stubs in the dev extras
from PIL import Image

from app_patch.settings import PROJECT_ROOT
from bench.api_load import process_cpu_s
from bench.common import BenchError, tail
from bench.env import BenchEnv
from bench.parsers import percentile
from bench.report import BenchResult, Check, Ratio, Series
from infra.loopback import free_port

NAME = "persistence_cost"
TITLE = "Cost of persistence: API with the kit vs without (HTTP)"
CLIENTS = 32
BIG_UPLOAD_BYTES = 10 * 1024 * 1024
SAMPLE_S = 0.05
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 60.0
BIG_TIMEOUT_S = 300.0
BOUNDARY = b"ma-bench-7f3a9c"
WRITE_SLICE = 256 * 1024
POST_TARGET = 0.70
GET_TARGET = 0.60
BARE_TMP_ENV = "MA_BENCH_BARE_TMP"  # bench.bare_api.TMP_DIR_ENV (not imported: api code)


@dataclass(frozen=True)
class Sizes:
    seeds: int
    posts: int
    gets: int
    time_cap_s: float
    repetitions: int
    big_uploads: int


QUICK = Sizes(seeds=40, posts=240, gets=2000, time_cap_s=15, repetitions=2, big_uploads=20)
FULL = Sizes(seeds=200, posts=1500, gets=12000, time_cap_s=60, repetitions=3, big_uploads=200)


# ---------------------------------------------------------------- the servers


class Served:
    """``uvicorn <target>`` on 127.0.0.1 in its own process group."""

    def __init__(self, target: str, env: dict[str, str], log_path: Path, ready: str) -> None:
        self.target = target
        self.port = free_port()
        self.env = env
        self.log_path = log_path
        self.ready = ready
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            sys.executable, "-m", "uvicorn", self.target,
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"uvicorn {self.target} exited: {self.log_tail()}")
            with contextlib.suppress(OSError, BenchError):
                if asyncio.run(_get_status(self.port, self.ready)) == 200:
                    return
            time.sleep(0.2)
        raise BenchError(f"uvicorn {self.target} not ready in {START_TIMEOUT_S:.0f} s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self) -> str:
        try:
            return tail(self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@contextlib.contextmanager
def servers(env: BenchEnv, db_url: str, scratch: Path) -> Iterator[tuple[Served, Served]]:
    base = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    bare_tmp = scratch / "bare-tmp"
    bare_tmp.mkdir()
    ours_env = {
        **base,
        "MA_DB_URL": db_url,
        "MA_REDIS_URL": env.redis_url,
        "MA_STORAGE_ROOT": str(scratch / "storage"),
        "MA_DATA_DIR": str(scratch / "data"),
        "MA_API_LOG_JSON": "true",  # as in the container
        # every big upload at once must be accepted, not shed (default cap: 128 in flight)
        "MA_API_MAX_CONCURRENT_UPLOADS": str(max(256, FULL.big_uploads + CLIENTS)),
    }
    bare_env = {**base, BARE_TMP_ENV: str(bare_tmp)}  # same filesystem as the store
    ours = Served("api.main:app", ours_env, scratch / "uvicorn-ours.log", "/health/ready")
    bare = Served("bench.bare_api:app", bare_env, scratch / "uvicorn-bare.log", "/health")
    try:
        ours.start()
        bare.start()
        yield ours, bare
    finally:
        ours.stop()
        bare.stop()


# ---------------------------------------------------------------- a minimal HTTP/1.1 client


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1; responses need a Content-Length."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, *body: bytes) -> tuple[int, bytes]:
        """Send ``head`` then the ``body`` pieces (big ones in slices, draining between)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(head)
        for piece in body:
            view = memoryview(piece)
            for start in range(0, len(view), WRITE_SLICE):
                self.writer.write(view[start : start + WRITE_SLICE])
                await self.writer.drain()
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, close = -1, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length < 0:
            raise BenchError("response without Content-Length")
        payload = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def get_head(port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n".encode()


async def _get_status(port: int, path: str) -> int:
    conn = Connection(port)
    try:
        status, _ = await asyncio.wait_for(conn.request(get_head(port, path)), 5)
        return status
    finally:
        await conn.close()


def upload_parts(filename: str, content_type: str, analysis_type: str) -> tuple[bytes, bytes]:
    """The multipart framing around a file's bytes: (before, after)."""
    before = (
        b"--" + BOUNDARY + b"\r\n"
        b'content-disposition: form-data; name="analysis_type"\r\n\r\n'
        + analysis_type.encode()
        + b"\r\n--" + BOUNDARY + b"\r\n"
        b'content-disposition: form-data; name="file"; filename="' + filename.encode() + b'"\r\n'
        b"content-type: " + content_type.encode() + b"\r\n\r\n"
    )  # fmt: skip
    return before, b"\r\n--" + BOUNDARY + b"--\r\n"


def post_head(port: int, length: int) -> bytes:
    return (
        f"POST /analyses HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: multipart/form-data; boundary={BOUNDARY.decode()}\r\n"
        f"content-length: {length}\r\n\r\n"
    ).encode()


# ---------------------------------------------------------------- the uploads


def base_png(side: int = 64) -> bytes:
    noise = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = BytesIO()
    noise.save(out, format="PNG")
    return out.getvalue()


def distinct_png(base: bytes, n: int) -> bytes:
    """``base`` with a tEXt chunk naming ``n`` before IEND: a distinct, valid PNG."""
    data = b"bench\x00" + str(n).encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data
    chunk += struct.pack(">I", zlib.crc32(chunk[4:]))
    return base[:-12] + chunk + base[-12:]  # IEND is the last 12 bytes


class ImageUploads:
    """``POST /analyses`` request bytes of distinct small PNGs (image analysis)."""

    def __init__(self, port: int, first: int) -> None:
        self.port = port
        self.next = first
        self.base = base_png()
        self.before, self.after = upload_parts("bench.png", "image/png", "image")

    def __call__(self) -> tuple[bytes, bytes]:
        self.next += 1
        body = self.before + distinct_png(self.base, self.next) + self.after
        return post_head(self.port, len(body)), body


# ---------------------------------------------------------------- the driver


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


class GetJobs:
    def __init__(self, port: int, ids: list[str]) -> None:
        self.heads = [get_head(port, f"/analyses/{job_id}") for job_id in ids]
        self.n = 0

    def __call__(self) -> tuple[bytes, bytes]:
        self.n += 1
        return self.heads[self.n % len(self.heads)], b""


# ---------------------------------------------------------------- peak RSS under big uploads


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


# ---------------------------------------------------------------- the benchmark


def _ms_per_request(runs: list[Run]) -> list[float]:
    return [1000 * r.server_cpu_s / r.ok for r in runs if r.ok]


def _latency(runs: list[Run], q: float) -> list[float]:
    return [v for r in runs if (v := r.pct(q)) is not None]


def run(env: BenchEnv, quick: bool) -> BenchResult:
    sizes = QUICK if quick else FULL
    db_url = env.create_database("cost")
    scratch = env.scratch_dir("cost")
    posts: dict[str, list[Run]] = {"ours": [], "bare": []}
    gets: dict[str, list[Run]] = {"ours": [], "bare": []}
    try:
        with servers(env, db_url, scratch) as (ours, bare):
            sides = {"ours": ours, "bare": bare}
            ids = {name: seed(server, sizes.seeds) for name, server in sides.items()}
            for rep in range(sizes.repetitions):
                order = ["ours", "bare"] if rep % 2 == 0 else ["bare", "ours"]
                for name in order:
                    server = sides[name]
                    uploads = ImageUploads(server.port, first=rep * 10**6)
                    warm = f"/analyses/{ids[name][0]}"
                    posts[name].append(timed(server, uploads, sizes.posts, sizes, warm))
                for name in order:
                    server = sides[name]
                    reads = GetJobs(server.port, ids[name])
                    warm = f"/analyses/{ids[name][0]}"
                    gets[name].append(timed(server, reads, sizes.gets, sizes, warm))
            rss = measure_rss(ours, sizes.big_uploads)
            bare_rss = measure_rss(bare, sizes.big_uploads)
            ours_log = ours.log_tail()
    finally:
        env.drop_database(db_url)
        shutil.rmtree(scratch, ignore_errors=True)  # up to 2 GiB of stored big uploads
    return _result(sizes, posts, gets, rss, bare_rss, ours_log)


def _result(
    sizes: Sizes,
    posts: dict[str, list[Run]],
    gets: dict[str, list[Run]],
    rss: RssRun,
    bare_rss: RssRun,
    ours_log: str,
) -> BenchResult:
    def lat(key: str, runs: list[Run], q: float, label: str, role: Any) -> Series:
        return Series(key, label, "ms", _latency(runs, q), role=role, better="lower")

    ours_runs = posts["ours"] + gets["ours"]
    every = [*ours_runs, *posts["bare"], *gets["bare"]]
    five_xx = sum(n for r in every for s, n in r.statuses.items() if s >= 500)
    five_xx += sum(n for s, n in rss.statuses.items() if s >= 500)
    not_ok = sum(n for r in every for s, n in r.statuses.items() if not 200 <= s < 300)
    deferred = sum(r.statuses[202] for r in posts["ours"]) + rss.statuses[202]
    transport = sum(sum(r.errors.values()) for r in every) + sum(rss.errors.values())
    big_ok = rss.statuses[201]
    truncated = [
        f"{kind} rep {i}"
        for kind, runs in (("POST", posts["ours"]), ("GET", gets["ours"]))
        for i, r in enumerate(runs)
        if r.stopped_by_deadline
    ]
    driver = [100 * r.driver_cpu_s / r.wall_s for r in ours_runs if r.wall_s > 0]
    result = BenchResult(
        name=NAME,
        title=TITLE,
        series=[
            Series(
                "post_rps",
                "ours: POST /analyses (image)",
                "req/s",
                [r.rps for r in posts["ours"]],
                note=f"{CLIENTS} clients",
            ),
            Series(
                "bare_post_rps",
                "without the kit: POST /analyses",
                "req/s",
                [r.rps for r in posts["bare"]],
                role="limit",
                note="same analysis + uvicorn",
            ),
            Series(
                "get_rps",
                "ours: cached GET /analyses/{id}",
                "req/s",
                [r.rps for r in gets["ours"]],
                note=f"{CLIENTS} clients, Redis hit",
            ),
            Series(
                "bare_get_rps",
                "without the kit: GET /analyses/{id}",
                "req/s",
                [r.rps for r in gets["bare"]],
                role="limit",
                note="JobOut from a dict",
            ),
            lat("post_p50", posts["ours"], 50, "ours: POST p50", "ours"),
            lat("post_p99", posts["ours"], 99, "ours: POST p99", "ours"),
            lat("bare_post_p50", posts["bare"], 50, "without the kit: POST p50", "limit"),
            lat("bare_post_p99", posts["bare"], 99, "without the kit: POST p99", "limit"),
            lat("get_p50", gets["ours"], 50, "ours: GET p50", "ours"),
            lat("get_p99", gets["ours"], 99, "ours: GET p99", "ours"),
            lat("bare_get_p50", gets["bare"], 50, "without the kit: GET p50", "limit"),
            lat("bare_get_p99", gets["bare"], 99, "without the kit: GET p99", "limit"),
            Series(
                "post_cpu",
                "ours: API process CPU per POST",
                "ms",
                _ms_per_request(posts["ours"]),
                role="context",
                better="lower",
            ),
            Series(
                "bare_post_cpu",
                "without the kit: API process CPU per POST",
                "ms",
                _ms_per_request(posts["bare"]),
                role="context",
                better="lower",
            ),
            Series(
                "get_cpu",
                "ours: API process CPU per GET",
                "ms",
                _ms_per_request(gets["ours"]),
                role="context",
                better="lower",
            ),
            Series(
                "bare_get_cpu",
                "without the kit: API process CPU per GET",
                "ms",
                _ms_per_request(gets["bare"]),
                role="context",
                better="lower",
            ),
            Series(
                "driver_cpu",
                "driver CPU while driving ours",
                "% of 1 core",
                driver,
                role="context",
                better="lower",
                note="raw HTTP/1.1 client, this process",
            ),
            Series(
                "rss_idle",
                "ours: API RSS idle",
                "MiB",
                [rss.idle_mib],
                role="context",
                better="lower",
            ),
            Series(
                "rss_peak",
                f"ours: API peak RSS, {sizes.big_uploads} x 10 MiB at once",
                "MiB",
                [rss.peak_mib],
                role="context",
                better="lower",
                note=f"{rss.samples} samples, every {SAMPLE_S * 1000:.0f} ms",
            ),
            Series(
                "rss_growth",
                "ours: peak - idle RSS",
                "MiB",
                [rss.growth_mib],
                role="context",
                better="lower",
            ),
            Series(
                "bare_rss_growth",
                "without the kit: peak - idle RSS",
                "MiB",
                [bare_rss.growth_mib],
                role="context",
                better="lower",
                note=f"idle {bare_rss.idle_mib:.0f} MiB",
            ),
            Series(
                "big_wall",
                f"ours: {sizes.big_uploads} x 10 MiB uploads, wall",
                "s",
                [rss.wall_s],
                role="context",
                better="lower",
                note=f"without the kit: {bare_rss.wall_s:.1f} s",
            ),
        ],
        ratios=[
            Ratio("post_rps", "bare_post_rps", POST_TARGET),
            Ratio("get_rps", "bare_get_rps", GET_TARGET),
        ],
        checks=[
            Check("5xx responses", five_xx, "= 0", five_xx == 0),
            Check("non-2xx responses (POST/GET runs)", not_ok, "= 0", not_ok == 0),
            Check("transport errors (client side)", transport, "= 0", transport == 0),
            Check("uploads deferred to the outbox", deferred, "= 0", deferred == 0),
            Check(
                "10 MiB uploads answered 201",
                big_ok,
                f"= {sizes.big_uploads}",
                big_ok == sizes.big_uploads,
            ),
        ],
        params={
            "clients": CLIENTS,
            "posts_per_rep": sizes.posts,
            "gets_per_rep": sizes.gets,
            "seeded_jobs": sizes.seeds,
            "time_cap_s": sizes.time_cap_s,
            "repetitions": sizes.repetitions,
            "big_uploads": f"{sizes.big_uploads} x 10 MiB",
        },
        notes=[
            "Both sides: uvicorn <app> --host 127.0.0.1 --workers 1 in their own process, run "
            "side by side, alternating within each repetition; the driver shares the same "
            "machine (on 2 cores it competes with the server, and other work on the machine "
            "shows in 'machine CPU busy'). 'CPU per request' is the API process's utime + "
            "stime over the run divided by its answered requests: the cost, whatever the load.",
            "Without the kit = bench.bare_api: the same FastAPI routes, StreamedForm parsing and "
            "api.analysis.run_analysis in a worker thread; the upload goes to a temp file on the "
            "same filesystem (no fsync) that is deleted; jobs live in a dict. Ours adds the access "
            "guard, request-id/metrics middleware, upload gate, fsync'd staging, the media row "
            "+ file placement, the job + result transaction and the Redis write-through.",
            f"Big uploads: {sizes.big_uploads} distinct files sent at once, one connection "
            "each (MA_API_MAX_CONCURRENT_UPLOADS raised so none is shed).",
        ],
    )
    result.notes += _explanations(posts, gets, rss, sizes)
    if truncated:
        result.notes.append(f"Hit the time cap before all requests: {', '.join(truncated)}.")
    if five_xx or transport or not_ok:
        result.notes.append(f"API log tail: {ours_log[-1500:]}")
    return result


def _median_or_nan(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _explanations(
    posts: dict[str, list[Run]], gets: dict[str, list[Run]], rss: RssRun, sizes: Sizes
) -> list[str]:
    """Where the difference goes (from a py-spy profile of the API under these loads; the
    figures in the text are this run's)."""
    post = [_median_or_nan(_ms_per_request(posts[side])) for side in ("ours", "bare")]
    get = [_median_or_nan(_ms_per_request(gets[side])) for side in ("ours", "bare")]
    per_upload = rss.growth_mib / max(1, sizes.big_uploads)
    return [
        f"POST: the API spends {post[0]:.1f} ms of CPU per upload with the kit against "
        f"{post[1]:.2f} ms without it; the gap is the persistence itself: two PostgreSQL "
        "transactions through SQLAlchemy + psycopg (key lock, media row lock + upsert; job + "
        "result), the Redis write-through (job, result, history version), fsync of the tmp "
        "file, of a new directory and of the directory after the rename; PostgreSQL's own CPU "
        "and the fsync waits come on top, on the same 2 cores. No single hot spot: in a py-spy "
        "profile, psycopg/SQLAlchemy execution and commits take the largest share, then file "
        "placement (fsyncs) and Redis. The 70 % target would need the persistence to cost "
        "less than the bare request itself; not reachable with durable per-upload commits.",
        f"Cached GET: {get[0]:.2f} ms of API CPU per request against {get[1]:.2f} ms; the "
        "difference is the Redis round trip through redis-py (about a sixth of the API's "
        "samples; redis-py's per-call wrappers, connection pool and retry included), the "
        "access log rendered as JSON by structlog with secret redaction (about 8 %), the "
        "kit's three middlewares (request id + latency histogram, access guard, upload gate) "
        "and decoding the cached JSON into JobOut before FastAPI encodes it again.",
        f"RSS: {per_upload:.1f} MiB per concurrent big upload at the peak: each upload is "
        "streamed (never held whole), but staging collects up to chunk_bytes (1 MiB, "
        "MA_STORAGE_CHUNK_BYTES) before each write to the tmp file; the rest is uvicorn's "
        "and the multipart parser's per-connection buffers and allocator slack (the bare app "
        "shows the same per-connection part).",
    ]
