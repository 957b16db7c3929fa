"""``invoke up`` to ready with the compose engine on Docker (cold: fresh volumes each time).

Each repetition runs ``python -m bench.up_probe`` (the same ``infra.stack_ops.up(engine="compose")``
call as the ``up`` task, with its state file and rendered compose file redirected into the
benchmark's scratch dir) and times the subprocess until it returns, i.e. until PostgreSQL and
Redis are healthy, ``alembic upgrade head`` ran in the API container and the API container is
healthy; ``/health/ready`` is then checked from the host. The stack is taken down with its
volumes after every repetition (timed separately, as context).

The first repetition builds the images as ``invoke up`` does by default (layer cache warm, so
only what changed in the sources is rebuilt); the others use ``--no-build``. With no Docker
engine, or when this stack's containers or volumes already exist on the engine (someone else's
stack: it is never touched), the benchmark is recorded as skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx

from app_patch.settings import PROJECT_ROOT
from bench.common import BenchError, run_timed, tail
from bench.env import BenchEnv
from bench.report import BenchResult, Series
from infra.loopback import free_port

NAME = "up"
TITLE = "invoke up to ready (compose engine, Docker)"
_LOG_LINE = re.compile(r"^\s*([0-9.]+) (.*)$")


@dataclass(frozen=True)
class Sizes:
    build_first: bool
    repetitions: int  # without build


QUICK = Sizes(build_first=False, repetitions=1)
FULL = Sizes(build_first=True, repetitions=3)


def docker_problem() -> str | None:
    """Why the benchmark cannot run here, or None."""
    try:
        from infra import docker_host
        from infra.config import config_from_env
        from infra.stack import build_stack
    except ImportError as exc:  # the [infra] extra is not installed
        return f"infra extra not installed ({exc})"
    try:
        docker_host.require_engine()
    except docker_host.DockerUnavailable as exc:
        return f"no Docker engine ({exc})"
    config = config_from_env(os.environ)
    spec = build_stack(config)
    with closing(docker_host.client()) as client:
        names = {c.name for c in client.containers.list(all=True)}
        taken = sorted({s.name for s in spec.services} & names)
        if taken:
            return f"containers {', '.join(taken)} already exist (not ours: left alone)"
        volumes = {v.name for v in client.volumes.list()}
        used = sorted({v.name for v in spec.volumes} & volumes)
        if used:
            return f"volumes {', '.join(used)} already exist (someone's data: left alone)"
        networks = {n.name for n in client.networks.list()}
        if config.network_name in networks:
            return f"network {config.network_name} already exists (in use: left alone)"
    return None


def phases(stdout: str) -> dict[str, float]:
    """Seconds per phase from the probe's timestamped engine log."""
    marks: list[tuple[float, str]] = []
    for line in stdout.splitlines():
        match = _LOG_LINE.match(line)
        if match:
            marks.append((float(match.group(1)), match.group(2)))
    if not marks:
        return {}

    def first(prefix: str) -> float | None:
        return next((t for t, text in marks if prefix in text), None)

    compose_at = first(" up -d ") or first("applying the spec")
    migrate_at = first("migrating")
    ready_at = first("ready")
    result: dict[str, float] = {}
    if compose_at is not None:
        result["build_s"] = compose_at
    if compose_at is not None and migrate_at is not None:
        result["start_servers_healthy_s"] = migrate_at - compose_at
    if migrate_at is not None and ready_at is not None:
        result["migrate_api_healthy_s"] = ready_at - migrate_at
    return result


def probe_env() -> dict[str, str]:
    from infra.config import STACK_SECRETS, env_key

    env = dict(os.environ)
    for secret in STACK_SECRETS:  # the stack's one list of passwords
        env.setdefault(env_key(secret.name), f"bench-{secrets.token_hex(8)}")
    env["MA_INFRA_API_HOST_IP"] = "127.0.0.1"
    env["MA_INFRA_API_HOST_PORT"] = str(free_port())
    return env


def run_probe(scratch: Path, env: dict[str, str], *extra: str) -> tuple[float, str]:
    done = run_timed(
        [sys.executable, "-m", "bench.up_probe", "--scratch", str(scratch), *extra],
        env=env,
        cwd=PROJECT_ROOT,
        timeout_s=900,
    )
    if done.returncode != 0:
        raise BenchError(f"up_probe {' '.join(extra)} failed: {tail(done.stdout + done.stderr)}")
    return done.seconds, done.stdout


def run(env: BenchEnv, quick: bool) -> BenchResult:
    sizes = QUICK if quick else FULL
    result = BenchResult(name=NAME, title=TITLE)
    problem = docker_problem()
    if problem:
        result.skipped = problem
        return result
    scratch = env.scratch_dir("up")
    probe = probe_env()
    built: list[float] = []
    cold: list[float] = []
    downs: list[float] = []
    phase_samples: dict[str, list[float]] = {}
    plan = (["build"] if sizes.build_first else []) + ["no-build"] * sizes.repetitions
    for mode in plan:
        try:
            seconds, stdout = run_probe(
                scratch, probe, *([] if mode == "build" else ["--no-build"])
            )
            tail_json = json.loads(stdout.strip().splitlines()[-1])
            api_url = tail_json.get("api_url")
            if api_url:
                ready = httpx.get(f"{api_url}/health/ready", timeout=10, trust_env=False)
                if ready.status_code != 200:
                    raise BenchError(f"/health/ready -> {ready.status_code} after up")
            (built if mode == "build" else cold).append(seconds)
            if mode == "no-build":
                for key, value in phases(stdout).items():
                    phase_samples.setdefault(key, []).append(value)
        finally:
            down_s, _ = run_probe(scratch, probe, "--down")
            downs.append(down_s)
    if built:
        result.series.append(
            Series(
                "up_build",
                "invoke up, images built (layer cache warm)",
                "s",
                built,
                better="lower",
                note="as `invoke up` runs by default",
            )
        )
    result.series.append(
        Series(
            "up",
            "invoke up --no-build, cold volumes",
            "s",
            cold,
            better="lower",
            note="subprocess wall until the API container is healthy",
        )
    )
    labels = {
        "build_s": "  phase: images (no-build: checks only)",
        "start_servers_healthy_s": "  phase: compose up -> PG + Redis healthy",
        "migrate_api_healthy_s": "  phase: alembic from the host (owner) -> API healthy",
    }
    for key, label in labels.items():
        if key in phase_samples:
            result.series.append(
                Series(key, label, "s", phase_samples[key], role="context", better="lower")
            )
    result.series.append(
        Series(
            "down", "invoke down --volumes (after each)", "s", downs, role="context", better="lower"
        )
    )
    result.params = {"repetitions": len(cold), "first_with_build": sizes.build_first}
    result.notes = [
        "No raw limit is measured for this one: the phases show where the time goes. "
        "Docker reports health only every healthcheck interval (5 s in infra/stack/), so "
        "each wait rounds up to the next check.",
    ]
    return result
