"""The stack's swarm services, proven ours by their owner label, and their tasks on this node
(where the servers answer from the host)."""

from __future__ import annotations

from contextlib import closing
from typing import Any

from docker.errors import NotFound

from infra import docker_host
from infra.engines.swarm.cluster import SwarmError, gwbridge_ip
from infra.spec import Stack
from infra.stack import OWNER_LABEL, STORAGE_NODE_LABEL

SERVICE_LABEL = "com.docker.swarm.service.name"


def full_name(spec: Stack, service: str) -> str:
    """``docker stack deploy`` names a service ``<stack>_<service>``."""
    return f"{spec.project}_{service}"


def get_service(engine: Any, name: str) -> Any:
    """``engine.services.get(name)`` (the SDK's method is untyped)."""
    return engine.services.get(name)


def services(spec: Stack) -> dict[str, Any]:
    """The spec's swarm services that exist (by spec name), as the SDK's objects."""
    found: dict[str, Any] = {}
    with closing(docker_host.client()) as engine:
        for service in spec.services:
            try:
                found[service.name] = get_service(engine, full_name(spec, service.name))
            except NotFound:
                continue
    return found


def owner_of(service: Any) -> str | None:
    labels = (service.attrs.get("Spec") or {}).get("Labels") or {}
    owner = labels.get(OWNER_LABEL)
    return str(owner) if owner else None


def require_owned(spec: Stack, owner: str | None, action: str) -> dict[str, Any]:
    """The spec's services that exist, each proven ours by its owner label."""
    found = services(spec)
    foreign = {name: owner_of(s) for name, s in found.items() if owner_of(s) != owner}
    if foreign:
        described = ", ".join(f"{n} (owner {o or 'none'})" for n, o in foreign.items())
        raise SwarmError(
            f"refusing to {action}: swarm service(s) {described} not started by this checkout "
            f"({owner}): another checkout or stack owns them"
        )
    return found


def task_containers(spec: Stack, service: str) -> list[dict[str, Any]]:
    """The running containers of a service's tasks on this node (docker inspect of each)."""
    with closing(docker_host.client()) as engine:
        listed = engine.containers.list(
            filters={"label": f"{SERVICE_LABEL}={full_name(spec, service)}"}
        )
        return [dict(c.attrs) for c in listed]


def task_container(spec: Stack, service: str) -> str:
    """The name of one running, healthy task container of ``service`` on this node."""
    found = task_containers(spec, service)
    healthy = [
        c for c in found if (c["State"].get("Health") or {}).get("Status") in {None, "healthy"}
    ]
    if not (healthy or found):
        raise SwarmError(
            f"no running task of {full_name(spec, service)} on this node: run invoke on the "
            f"node labelled {STORAGE_NODE_LABEL}=true, or invoke up"
        )
    return str((healthy or found)[0]["Name"]).lstrip("/")


def server_address(spec: Stack, service: str) -> str:
    found = task_containers(spec, service)
    if not found:
        raise SwarmError(
            f"the swarm stack's {service} has no running task on this node: run invoke up "
            f"(or run invoke on the node labelled {STORAGE_NODE_LABEL}=true)"
        )
    return gwbridge_ip(str(found[0]["Id"]))


def any_address(name: str, network: str) -> str:
    """External mode: a shared server on this node, a plain container (its address on the
    attachable overlay is not reachable from here either: its gwbridge one is)."""
    try:
        attrs = docker_host.inspect(name)
    except NotFound:
        raise SwarmError(f"mode=external: no container {name} on this node") from None
    return gwbridge_ip(str(attrs["Id"]))
