"""Both sides under uvicorn: the API with the kit and ``bench.bare_api`` without it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

from bench.common import BenchError
from bench.env import BenchEnv
from bench.persistence_cost.client import get_status
from bench.persistence_cost.sizes import CLIENTS, FULL
from bench.uvicorn_process import UvicornProcess, inherited_env, kit_env

BARE_TMP_ENV = "MA_BENCH_BARE_TMP"  # bench.bare_api.TMP_DIR_ENV (not imported: api code)


class Served(UvicornProcess):
    """``uvicorn <target>`` on 127.0.0.1, ready once ``ready`` answers 200."""

    def __init__(self, target: str, env: dict[str, str], log_path: Path, ready: str) -> None:
        super().__init__(target, env, log_path, target)
        self.ready = ready

    def start(self) -> None:
        self.launch(self.answered)

    def answered(self) -> bool:
        with contextlib.suppress(OSError, BenchError):
            return asyncio.run(get_status(self.port, self.ready)) == 200
        return False


@contextlib.contextmanager
def servers(env: BenchEnv, db_url: str, scratch: Path) -> Iterator[tuple[Served, Served]]:
    base = inherited_env()
    bare_tmp = scratch / "bare-tmp"
    bare_tmp.mkdir()
    # every big upload at once must be accepted, not shed (default cap: 128 in flight)
    ours_env = kit_env(env, db_url, scratch, max(256, FULL.big_uploads + CLIENTS))
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
