"""Apply a :class:`~infra.spec.Stack` straight through the Docker API (docker-py).

The fallback runner when no compose CLI is installed: same names, labels, networks and
aliases, volumes, secret files (read-only bind mounts of the files ``infra.secrets_file``
writes, as compose mounts them), hardening, healthchecks, limits and ports as the rendered
compose file, and the same ``depends_on`` semantics (wait for health before starting a
dependant).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import docker
from docker.errors import NotFound
from docker.types import EndpointConfig, Mount

from infra.docker_host import client, container_state, wait_healthy
from infra.secrets_file import host_path, write_secret_files
from infra.spec import Service, Stack

PROJECT_LABEL = "com.docker.compose.project"
_NS = 1_000_000_000


def up(
    spec: Stack,
    secrets: Mapping[str, str],
    timeout_s: float = 300,
    log: Callable[[str], None] = lambda line: None,
    secrets_root: Path | None = None,
) -> None:
    """Write the secret files, create what is missing and (re)create every service container,
    in dependency order."""
    write_secret_files(spec, secrets, secrets_root)
    with closing(client(timeout_s=120)) as engine:
        for network in spec.networks:
            if engine.networks.list(names=[network.name]):
                continue
            if network.external:
                raise LookupError(f"external network {network.name} does not exist")
            log(f"creating network {network.name}")
            labels = _labels(spec, network.labels) | {"com.docker.compose.network": network.name}
            engine.networks.create(network.name, driver=network.driver, labels=labels)
        for volume in spec.volumes:
            try:
                engine.volumes.get(volume.name)
            except NotFound:
                if volume.external:
                    raise LookupError(f"external volume {volume.name} does not exist") from None
                log(f"creating volume {volume.name}")
                labels = _labels(spec, volume.labels) | {"com.docker.compose.volume": volume.name}
                engine.volumes.create(volume.name, labels=labels)
        for service in spec.ordered_services():
            _wait_dependencies(service, timeout_s)
            _replace(engine, spec, service, secrets_root, log)


def down(
    spec: Stack, remove_volumes: bool = False, log: Callable[[str], None] = lambda line: None
) -> None:
    """Remove the service containers (dependants first), then optionally the stack's own
    volumes, then its own network when nothing else is attached to it."""
    with closing(client(timeout_s=120)) as engine:
        for service in reversed(spec.ordered_services()):
            try:
                container = engine.containers.get(service.name)
            except NotFound:
                continue
            log(f"removing {service.name}")
            container.stop(timeout=20)
            container.remove()
        if remove_volumes:
            for volume in spec.volumes:
                if not volume.external:
                    _remove_volume(engine, volume.name)
        for network in spec.networks:
            if network.external:
                continue
            for found in engine.networks.list(names=[network.name]):
                found.reload()
                if not found.containers:
                    found.remove()


def _replace(
    engine: docker.DockerClient,
    spec: Stack,
    service: Service,
    secrets_root: Path | None,
    log: Callable[[str], None],
) -> None:
    try:
        old = engine.containers.get(service.name)
    except NotFound:
        old = None
    if old is not None:
        old.stop(timeout=20)
        old.remove()
    log(f"creating {service.name}")
    first, *others = service.networks
    container = engine.containers.create(
        service.image,
        command=list(service.command) if service.command is not None else None,
        name=service.name,
        environment=dict(service.env),
        user=service.user or "",
        labels=_labels(spec, service.labels) | {"com.docker.compose.service": service.name},
        healthcheck=_healthcheck(service),
        restart_policy=_restart_policy(service),
        mem_limit=f"{service.limits.memory_mb}m" if service.limits.memory_mb else None,
        nano_cpus=int(service.limits.cpus * _NS) if service.limits.cpus else None,
        ports={f"{p.container_port}/{p.protocol}": (p.host_ip, p.host_port) for p in service.ports},
        volumes={
            m.volume: {"bind": m.target, "mode": "ro" if m.read_only else "rw"}
            for m in service.volumes
        },
        mounts=[
            Mount(
                f.target,
                str(host_path(service.name, f, secrets_root).resolve()),
                type="bind",
                read_only=True,
            )
            for f in service.secret_files
        ],
        pids_limit=service.limits.pids,
        read_only=service.hardening.read_only,
        tmpfs=dict(service.hardening.tmpfs) or None,
        cap_drop=list(service.hardening.cap_drop),
        cap_add=list(service.hardening.cap_add) or None,
        security_opt=list(service.hardening.security_opt) or None,
        network=first.network,
        networking_config={
            first.network: EndpointConfig(engine.api.api_version, aliases=list(first.aliases))
        },
    )
    for attachment in others:
        engine.networks.get(attachment.network).connect(container, aliases=list(attachment.aliases))
    container.start()


def _wait_dependencies(service: Service, timeout_s: float) -> None:
    healthy = [name for name, cond in service.depends_on.items() if cond == "service_healthy"]
    if healthy:
        wait_healthy(healthy, timeout_s=timeout_s)
    deadline = time.monotonic() + timeout_s
    for name, condition in service.depends_on.items():
        while condition == "service_started" and container_state(name).status != "running":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not start")
            time.sleep(0.5)


def _restart_policy(service: Service) -> Any:
    return {"Name": service.restart} if service.restart != "no" else None


def _healthcheck(service: Service) -> dict[str, Any] | None:
    check = service.healthcheck
    if check is None:
        return None
    return {
        "test": list(check.test),
        "interval": check.interval_s * _NS,
        "timeout": check.timeout_s * _NS,
        "retries": check.retries,
        "start_period": check.start_period_s * _NS,
    }


def _labels(spec: Stack, labels: Mapping[str, str]) -> dict[str, str]:
    return {**labels, PROJECT_LABEL: spec.project}


def _remove_volume(engine: docker.DockerClient, name: str) -> None:
    try:
        engine.volumes.get(name).remove()
    except NotFound:
        return
