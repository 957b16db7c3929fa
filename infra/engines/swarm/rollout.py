"""``invoke deploy`` on swarm: the API service updated onto a new image (start-first, one task
at a time, healthcheck-gated), waited for, and rolled back when it is not healthy in time."""

from __future__ import annotations

import time
from contextlib import closing
from typing import Any

from infra import docker_host
from infra.config import StackConfig
from infra.engines.base import DeployRequest
from infra.engines.swarm.cluster import SwarmError, docker_cli
from infra.engines.swarm.services import full_name, get_service
from infra.progress import Progress
from infra.spec import Stack


def rollout_api(
    spec: Stack, config: StackConfig, image: str, request: DeployRequest, progress: Progress
) -> None:
    name = full_name(spec, config.api_name)
    with closing(docker_host.client()) as engine:
        service = get_service(engine, name)
        current = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        before = (service.attrs.get("UpdateStatus") or {}).get("StartedAt")
    if current == image:
        progress.step(f"{name} already runs {image[:19]}: nothing to roll")
        return
    per_task = float(request.deploy_timeout_s or config.deploy_timeout_s)
    monitor = spec.service(config.api_name).deploy.monitor_s
    budget = config.api_replicas * (per_task + monitor + 5)
    progress.step(f"{name}: rolling {config.api_replicas} task(s) onto {image[:19]} (start-first)")
    docker_cli(
        ["service", "update", "--detach", "--no-resolve-image", "--image", image, name], progress
    )
    state = _wait_update(name, before, budget, progress)
    if state == "completed":
        progress.step(f"{name}: every task on the new image")
        return
    if state in {"updating", "paused"}:
        progress.step(f"{name}: not healthy within {budget:.0f}s ({state}): rolling back")
        docker_cli(["service", "rollback", "--detach", name], progress)
        state = _wait_update(name, before, 300, progress, rollback=True)
    raise SwarmError(
        f"the new image never became healthy within {per_task:.0f}s per task: swarm rolled "
        f"{config.api_name} back ({state}) and the old version keeps serving "
        f"(see `docker service ps {name} --no-trunc`)"
    )


def _wait_update(
    name: str, before: Any, timeout_s: float, progress: Progress, *, rollback: bool = False
) -> str:
    """The update's final state (``completed``, ``rollback_completed``, …), or its state at
    the deadline."""
    finals = (
        {"rollback_completed", "rollback_paused"}
        if rollback
        else {"completed", "rollback_completed", "rollback_paused", "paused"}
    )
    deadline = time.monotonic() + timeout_s
    last = ""
    state = "updating"
    while time.monotonic() < deadline:
        with closing(docker_host.client()) as engine:
            status = get_service(engine, name).attrs.get("UpdateStatus") or {}
        if status.get("StartedAt") != before or rollback:
            state = str(status.get("State") or "updating")
            message = str(status.get("Message") or "")
            if message != last:
                progress.step(f"{state}: {message}")
                last = message
            if state in finals:
                return state
        time.sleep(1)
    return state
