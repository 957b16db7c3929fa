"""The API (or the bare ASGI app) under uvicorn, and the counters it answers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.api_load.sizes import CLIENTS
from bench.api_server import STATS_PATH
from bench.env import BenchEnv
from bench.uvicorn_process import UvicornProcess, kit_env


class ApiServer(UvicornProcess):
    """``uvicorn bench.api_server:app`` on 127.0.0.1 in its own process group."""

    def __init__(self, env: dict[str, str], log_path: Path, kind: str) -> None:
        super().__init__(
            "bench.api_server:app", {**env, "MA_BENCH_APP": kind}, log_path, f"({kind})"
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.kind = kind

    def start(self) -> None:
        ready = "/health/ready" if self.kind == "real" else "/health"
        with httpx.Client(base_url=self.url, timeout=5, trust_env=False) as client:

            def answered() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return client.get(ready).status_code == 200
                return False

            self.launch(answered)

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
def servers(env: BenchEnv, db_url: str) -> Iterator[tuple[ApiServer, ApiServer, Path]]:
    scratch = env.scratch_dir("api")
    # throughput, not load shedding, is measured: every client may upload at once
    server_env = {**kit_env(env, db_url, scratch, CLIENTS), "PYTHONUNBUFFERED": "0"}
    real = ApiServer(server_env, scratch / "uvicorn-real.log", "real")
    bare = ApiServer(server_env, scratch / "uvicorn-bare.log", "bare")
    try:
        real.start()
        yield real, bare, scratch
    finally:
        real.stop()
        bare.stop()


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
