"""The workload: jobs seeded through the API, then one run of the load driver process."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

from app_patch.settings import PROJECT_ROOT
from bench.api_load.server import ApiServer
from bench.api_load.sizes import CLIENTS, Sizes
from bench.common import BenchError, tail
from bench.uvicorn_process import process_cpu_s


def seed_jobs(server: ApiServer, count: int) -> tuple[list[str], bytes]:
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


def run_driver(server: ApiServer, ids_file: Path, sizes: Sizes) -> dict[str, Any]:
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
