"""One engine's containers on the network: health, aliases, what is published, the proxy in
front of the API replicas, and the storage volume."""

from __future__ import annotations

import json
import secrets

from infra import docker_host, proxy
from infra.config import StackConfig
from infra.stack import POSTGRES_PORT, STORAGE_ROOT, STORAGE_VOLUME, api_replica_names
from infra.verify.hosts import inside, inspect_container
from infra.verify.results import CheckFailed


def healthy(container: str) -> str:
    state = inspect_container(container)["State"]
    health = (state.get("Health") or {}).get("Status", "none")
    if state.get("Status") != "running":
        raise CheckFailed(f"status {state.get('Status')}")
    if health != "healthy":
        raise CheckFailed(f"running but health is {health}")
    return f"running, {health}, restarts {state.get('RestartCount', 0) or 0}"


def on_network(container: str, network: str) -> str:
    attrs = inspect_container(container)
    networks = attrs["NetworkSettings"]["Networks"]
    if network not in networks:
        raise CheckFailed(f"attached to {sorted(networks)} only")
    aliases = networks[network].get("Aliases") or []
    # Docker's DNS answers a container's own name on user-defined networks, alias or not.
    if container not in aliases and attrs.get("Name", "").lstrip("/") != container:
        raise CheckFailed(f"{container} is neither its name nor among its aliases {aliases}")
    return f"{networks[network].get('IPAddress')} aliases {sorted(set(aliases))}"


def postgres_not_published(config: StackConfig) -> str:
    attrs = inspect_container(config.postgres_host)
    key = f"{POSTGRES_PORT}/tcp"
    bindings = (attrs["NetworkSettings"].get("Ports") or {}).get(key) or []
    configured = (attrs["HostConfig"].get("PortBindings") or {}).get(key) or []
    published = [*bindings, *configured]
    if config.postgres_host_port:
        if not published:
            raise CheckFailed(f"postgresHostPort={config.postgres_host_port} but not published")
        return f"published on purpose (postgresHostPort): {json.dumps(published)}"
    if published:
        raise CheckFailed(f"published: {json.dumps(published)}")
    return "no host port binding"


def api_behind_proxy(config: StackConfig) -> str:
    """No API replica publishes a port; the proxy publishes the API's."""
    for name in api_replica_names(config):
        bindings = inspect_container(name)["HostConfig"].get("PortBindings") or {}
        if any(bindings.values()):
            raise CheckFailed(f"{name} publishes {json.dumps(bindings)}")
    published = inspect_container(config.proxy_name)["HostConfig"].get("PortBindings") or {}
    if not any(published.values()):
        raise CheckFailed(f"{config.proxy_name} publishes nothing")
    return f"only {config.proxy_name} publishes: {json.dumps(published)}"


def proxy_sees_replicas(config: StackConfig) -> str:
    replicas = api_replica_names(config)
    addresses = {docker_host.container_ip(name, config.network_name) for name in replicas}
    servers = proxy.servers(config.proxy_name)
    up = {s.address for s in servers if s.up and not s.draining}
    missing = addresses - up
    if missing:
        raise CheckFailed(f"not UP in the proxy: {', '.join(sorted(missing))}")
    return f"{len(addresses)} replica(s) UP: {', '.join(sorted(addresses))}"


def storage_writable(container: str) -> str:
    mounts = inspect_container(container).get("Mounts") or []
    mount = next((m for m in mounts if m.get("Destination") == STORAGE_ROOT), None)
    if mount is None:
        raise CheckFailed(f"nothing mounted at {STORAGE_ROOT}")
    if mount.get("Type") != "volume" or mount.get("Name") != STORAGE_VOLUME:
        raise CheckFailed(f"{STORAGE_ROOT} is {mount.get('Type')} {mount.get('Name')}")
    if not mount.get("RW", False):
        raise CheckFailed(f"{STORAGE_ROOT} is mounted read-only")
    host = inside(container)
    if not host.mount_point(STORAGE_ROOT).exists:
        raise CheckFailed(f"{STORAGE_ROOT} is not a mount point inside the container")
    probe = f"{STORAGE_ROOT}/.verify-{secrets.token_hex(6)}"
    written = host.run(f"echo ok > {probe} && cat {probe} && rm -f {probe}")
    if written.rc != 0 or written.stdout.strip() != "ok":
        raise CheckFailed(f"write as {host.user().name} failed: {written.stderr.strip()}")
    return f"volume {STORAGE_VOLUME}, written and removed a file as {host.user().name}"
