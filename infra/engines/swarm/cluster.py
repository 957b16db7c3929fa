"""The swarm the engine runs on: is this a manager, the docker CLI, the overlay network, the
storage node and the host's way into a task (``docker_gwbridge``)."""

from __future__ import annotations

from contextlib import closing

from infra import docker_host
from infra.config import StackConfig
from infra.engines.cli import stream_cli
from infra.engines.kinds import EngineError
from infra.progress import Progress
from infra.stack import STORAGE_NODE_LABEL

GWBRIDGE = "docker_gwbridge"
BRIDGE_REFUSAL = (
    "network {name} is a bridge (one host): swarm services can only join an overlay network; "
    "to migrate, stop the containers on it, `docker network rm {name}`, "
    "`docker network create -d overlay --attachable {name}`, and reconnect them "
    "(`docker network connect {name} <container>`)"
)


class SwarmError(EngineError):
    """A swarm command failed, or the engine is not a swarm manager."""


def swarm_state() -> tuple[str, bool]:
    """(LocalNodeState, ControlAvailable) of the engine: ``active``/True on a manager."""
    with closing(docker_host.client()) as engine:
        info = engine.info().get("Swarm") or {}
    return str(info.get("LocalNodeState") or "inactive"), bool(info.get("ControlAvailable"))


def require_manager() -> None:
    docker_host.require_engine()
    state, manager = swarm_state()
    if state != "active":
        raise SwarmError(
            f"the Docker engine at {docker_host.engine_address()} is not in a swarm ({state}): "
            "run `docker swarm init` (or join one) first"
        )
    if not manager:
        raise SwarmError("this node is a swarm worker: run invoke on a manager")


def docker_cli(args: list[str], progress: Progress, timeout_s: float = 600) -> str:
    """``docker <args>``, its output streamed to ``progress``."""
    return stream_cli(
        ["docker", *args],
        progress,
        shown=" ".join(["docker", *args[:3]]),
        error=SwarmError,
        failed=lambda exc: f"docker {args[0]} {args[1]} failed ({exc.code}): {exc.last_line}",
        timeout_s=timeout_s,
    )


def network_driver(name: str) -> str | None:
    """The driver of the network ``name`` (exact name), None when there is none."""
    with closing(docker_host.client()) as engine:
        for found in engine.networks.list(names=[name]):
            if found.name == name:
                return str(found.attrs.get("Driver") or "")
    return None


def check_network(config: StackConfig) -> None:
    """Before anything is created: an existing ``af-network`` must be an overlay, and
    external mode needs one."""
    driver = network_driver(config.network_name)
    if driver == "bridge":
        raise SwarmError(BRIDGE_REFUSAL.format(name=config.network_name))
    if driver is None and config.mode == "external":
        raise SwarmError(f"mode=external but overlay network {config.network_name} does not exist")
    if driver is not None and driver != "overlay":
        raise SwarmError(f"network {config.network_name} is a {driver} network, not an overlay")


def gwbridge_ip(container_id: str) -> str:
    """A task container's address on ``docker_gwbridge``: the host's way in (overlay
    addresses are not reachable from the host)."""
    with closing(docker_host.client()) as engine:
        attached = engine.networks.get(GWBRIDGE).attrs.get("Containers") or {}
    entry = attached.get(container_id)
    if not entry:
        raise SwarmError(f"container {container_id[:12]} has no {GWBRIDGE} address")
    return str(entry["IPv4Address"]).split("/")[0]


def label_storage_node(progress: Progress) -> None:
    """A one-node swarm: label its node as the storage node (said once). Several nodes: one
    must be labelled already (where the volumes are is the operator's decision)."""
    with closing(docker_host.client()) as engine:
        nodes = engine.nodes.list()
        labelled = [
            n
            for n in nodes
            if (n.attrs["Spec"].get("Labels") or {}).get(STORAGE_NODE_LABEL) == "true"
        ]
        if labelled:
            return
        if len(nodes) > 1:
            raise SwarmError(
                f"no node of this {len(nodes)}-node swarm is labelled {STORAGE_NODE_LABEL}=true: "
                f"run `docker node update --label-add {STORAGE_NODE_LABEL}=true <node>` for the "
                "node that keeps the volumes"
            )
        node = nodes[0]
        spec = dict(node.attrs["Spec"])
        spec["Labels"] = {**(spec.get("Labels") or {}), STORAGE_NODE_LABEL: "true"}
        node.update(spec)
        hostname = str(node.attrs.get("Description", {}).get("Hostname") or node.id)
        progress.step(f"labelled this one-node swarm's node {hostname} {STORAGE_NODE_LABEL}=true")
