"""The local Docker engine (``DOCKER_HOST`` or the default socket): probe it, inspect it.

Nothing here starts a daemon: ``scripts/bootstrap`` (``infra/ci_docker.sh``) does that."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import docker
from docker.errors import DockerException, NotFound

DEFAULT_SOCKET = "unix:///var/run/docker.sock"


class DockerUnavailable(RuntimeError):
    """No Docker engine answers (tasks never start one)."""


@dataclass(frozen=True)
class ContainerState:
    name: str
    status: str  # created|running|paused|restarting|removing|exited|dead|missing
    health: str  # starting|healthy|unhealthy|none|missing

    @property
    def healthy(self) -> bool:
        return self.status == "running" and self.health in {"healthy", "none"}


def client(timeout_s: int = 60) -> docker.DockerClient:
    """A client for the engine in ``DOCKER_HOST`` or at the default socket."""
    return docker.from_env(timeout=timeout_s)


def engine_address(environ: Mapping[str, str] | None = None) -> str:
    """Where the Docker SDK (``docker.from_env``) looks for an engine: ``DOCKER_HOST``, else
    the default socket."""
    env = os.environ if environ is None else environ
    return env.get("DOCKER_HOST", "").strip() or DEFAULT_SOCKET


def daemon_answers(timeout_s: int = 3) -> bool:
    """A probe, nothing more: True when the engine at :func:`engine_address` answers a ping."""
    try:
        with closing(docker.from_env(timeout=timeout_s)) as probe:
            return bool(probe.ping())
    except (DockerException, OSError):
        return False


def require_engine() -> None:
    """Raise :class:`DockerUnavailable` (one line: what to run) unless an engine answers.

    Never starts one: tasks only probe. ``scripts/bootstrap`` (through ``infra/ci_docker.sh``)
    is the one place that starts ``dockerd``."""
    if not daemon_answers():
        raise DockerUnavailable(
            f"no Docker engine answers at {engine_address()}: start it (scripts/bootstrap "
            "does) or choose --engine embedded"
        )


def container_state(name: str) -> ContainerState:
    with closing(client()) as engine:
        try:
            attrs: dict[str, Any] = engine.api.inspect_container(name)
        except NotFound:
            return ContainerState(name, "missing", "missing")
    state = attrs.get("State", {})
    health = (state.get("Health") or {}).get("Status", "none")
    return ContainerState(name, str(state.get("Status", "unknown")), str(health))


def wait_healthy(names: list[str], timeout_s: float = 180.0, poll_s: float = 1.0) -> None:
    """Wait until every container runs and is healthy; raises with their states and log tails."""
    deadline = time.monotonic() + timeout_s
    states = [container_state(name) for name in names]
    while time.monotonic() < deadline:
        states = [container_state(name) for name in names]
        if all(state.healthy for state in states):
            return
        if any(state.status in {"exited", "dead", "missing"} or state.health == "unhealthy"
               for state in states):  # fmt: skip
            break
        time.sleep(poll_s)
    details = "; ".join(f"{s.name}: {s.status}/{s.health}" for s in states)
    tails = "\n".join(f"--- {s.name} ---\n{logs_tail(s.name)}" for s in states if not s.healthy)
    raise TimeoutError(f"containers not healthy ({details})\n{tails}")


def logs_tail(name: str, lines: int = 30) -> str:
    with closing(client()) as engine:
        try:
            raw = engine.api.logs(name, tail=lines)
        except NotFound:
            return "(no such container)"
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def network_exists(name: str) -> bool:
    with closing(client()) as engine:
        return any(network.name == name for network in engine.networks.list(names=[name]))


def container_ip(name: str, network: str) -> str:
    """The container's address on ``network`` (reachable from the Docker host itself)."""
    with closing(client()) as engine:
        attrs = engine.api.inspect_container(name)
    networks = attrs["NetworkSettings"]["Networks"]
    if network not in networks or not networks[network].get("IPAddress"):
        raise LookupError(f"container {name} has no address on network {network}")
    return str(networks[network]["IPAddress"])


def inspect(name: str) -> dict[str, Any]:
    with closing(client()) as engine:
        result: dict[str, Any] = engine.api.inspect_container(name)
    return result


def exec_run(name: str, command: list[str], user: str = "") -> tuple[int, str]:
    """Run ``command`` in a running container; returns (exit code, combined output)."""
    with closing(client(timeout_s=600)) as engine:
        container = engine.containers.get(name)
        result = container.exec_run(command, user=user, demux=False)
    raw = result.output
    output = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
    return (-1 if result.exit_code is None else int(result.exit_code)), output
