"""Bounded waits for the swarm to settle: the stack converged, the API reaching its servers,
a removed stack gone."""

from __future__ import annotations

import time
from contextlib import closing
from typing import Any

from docker.errors import NotFound

from infra import docker_host
from infra.engines.base import StackEndpoints
from infra.engines.swarm.cluster import SwarmError
from infra.engines.swarm.services import full_name, get_service
from infra.engines.swarm.stack_file import NAMESPACE_LABEL
from infra.progress import Progress
from infra.spec import Stack


def converge(spec: Stack, timeout_s: float, progress: Progress) -> None:
    """Wait (bounded) until every service runs its replicas and no update is in progress."""
    deadline = time.monotonic() + timeout_s
    reported = ""
    while True:
        waiting = []
        with closing(docker_host.client()) as engine:
            for service in spec.services:
                try:
                    found = get_service(engine, full_name(spec, service.name))
                except NotFound:
                    waiting.append(f"{service.name} missing")
                    continue
                tasks = found.tasks(filters={"desired-state": "running"})
                running = sum(1 for t in tasks if t["Status"]["State"] == "running")
                update = (found.attrs.get("UpdateStatus") or {}).get("State", "")
                if running < service.deploy.replicas or update in {"updating", "rollback_started"}:
                    waiting.append(f"{service.name} {running}/{service.deploy.replicas}")
        if not waiting:
            return
        line = ", ".join(waiting)
        if line != reported:
            progress.step(f"waiting for {line}")
            reported = line
        if time.monotonic() >= deadline:
            raise SwarmError(f"the swarm stack did not converge within {timeout_s:.0f}s: {line}")
        time.sleep(1)


def wait_dependencies(endpoints: StackEndpoints, timeout_s: float, progress: Progress) -> None:
    """Swarm starts every service at once (no ``depends_on``): an API task may come up before
    PostgreSQL and answer ``degraded`` until its breaker closes. Wait (bounded) until the API
    reports both servers ``ok`` through the proxy."""
    import httpx

    deadline = time.monotonic() + timeout_s
    checks: dict[str, Any] = {}
    progress.step("waiting for the API to reach PostgreSQL and Redis")
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"{endpoints.api_url}/health/ready", timeout=5)
            checks = dict(answer.json().get("checks") or {})
        except (httpx.HTTPError, ValueError):
            checks = {}
        if checks.get("postgres") == "ok" and checks.get("redis") == "ok":
            return
        time.sleep(1)
    raise SwarmError(f"the API does not reach its servers after {timeout_s:.0f}s: {checks}")


def wait_gone(spec: Stack, progress: Progress, timeout_s: float = 120) -> None:
    """``docker stack rm`` returns at once: wait until the tasks' containers and the stack's
    network are gone (an immediate ``up`` would race them)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with closing(docker_host.client()) as engine:
            left = engine.containers.list(
                all=True, filters={"label": f"{NAMESPACE_LABEL}={spec.project}"}
            )
            nets = engine.networks.list(filters={"label": f"{NAMESPACE_LABEL}={spec.project}"})
        if not left and not nets:
            return
        time.sleep(1)
    progress.step(f"the stack's tasks or network were still going after {timeout_s:.0f}s")
