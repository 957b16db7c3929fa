"""The local Docker engine: reach it, start it when installed but not running, inspect it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.errors import DockerException, NotFound

DOCKERD_LOG = Path("/tmp/dockerd.log")


class DockerUnavailable(RuntimeError):
    """No Docker engine answers and none could be started."""


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


def daemon_answers(timeout_s: int = 3) -> bool:
    try:
        with closing(docker.from_env(timeout=timeout_s)) as probe:
            return bool(probe.ping())
    except (DockerException, OSError):
        return False


def ensure_dockerd(timeout_s: float = 60.0, log_path: Path = DOCKERD_LOG) -> bool:
    """Make sure an engine answers; start ``dockerd`` in the background when it is installed
    but not running. Returns True when this call started it."""
    if daemon_answers():
        return False
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise DockerUnavailable("no Docker engine answers and dockerd is not installed")
    if os.geteuid() != 0:
        raise DockerUnavailable("no Docker engine answers and starting dockerd needs root")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        subprocess.Popen(
            [dockerd],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if daemon_answers():
            return True
        time.sleep(0.5)
    raise DockerUnavailable(f"dockerd did not answer within {timeout_s:.0f}s (see {log_path})")


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
