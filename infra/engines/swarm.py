"""The swarm engine: the stack spec (target ``swarm``) rendered to a stack file and applied with
``docker stack deploy`` on a swarm manager (``invoke up --engine swarm``; never chosen
automatically).

* **Network.** Managed: ``af-network`` is an attachable overlay (plain containers of other
  projects can still join it). External: an existing overlay ``af-network``; an existing
  *bridge* of that name is refused in one line before anything is created.
* **Secrets.** The same values as the other engines (``.data/stack.env``), written to the same
  files under ``.data/secrets``, become swarm secrets named after a hash of their content
  (:func:`infra.compose.swarm_secret_names`); a rotated value is a new secret, which rolls the
  services that mount it; the superseded versions are removed after the stack converged.
* **Placement.** PostgreSQL, Redis and the API run on the node labelled
  ``media-analysis.storage=true`` (their volumes are local); ``up`` labels the node itself
  when the swarm has one node, and says so.
* **Images** are run by id (locally built: no registry; ``--resolve-image never``), so the
  daemon never tries to pull them and a rebuild rolls out. A multi-node swarm needs them in
  a registry instead.
* **From this host** the servers answer on their task's ``docker_gwbridge`` address (the
  overlay is not reachable from the host; nothing is published but the proxy's port), so the
  tasks that use them (migrate, verify, roles) run on the storage node, where they are.
* **Owner.** Every service (and so every task) carries this checkout's owner label; tasks
  refuse a stack whose services carry another.
* ``deploy`` is ``docker service update --image <new id>`` of the API service (start-first,
  one task at a time, healthcheck-gated), waited for; a new image that is not healthy in time
  is rolled back (by swarm's ``failure_action``, or by us at the deadline).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from docker.errors import APIError, NotFound

from infra import compose, docker_host, images, secrets_file
from infra.config import StackConfig, config_from_env, secrets_for, secrets_from_env
from infra.engines import containers, record
from infra.engines.base import (
    DeployRequest,
    DownPlan,
    EngineError,
    EngineKind,
    StackEndpoints,
    UpRequest,
)
from infra.progress import CommandFailed, Progress, run_streaming
from infra.spec import Stack
from infra.stack import API_PORT, OWNER_LABEL, STORAGE_NODE_LABEL, build_stack
from infra.verify_containers import CheckResult

NAMESPACE_LABEL = "com.docker.stack.namespace"
SERVICE_LABEL = "com.docker.swarm.service.name"
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


def stack_path() -> Path:
    """The rendered stack file, beside the stack's record (like compose's)."""
    return record.state_dir() / "swarm-stack.yml"


def full_name(spec: Stack, service: str) -> str:
    """``docker stack deploy`` names a service ``<stack>_<service>``."""
    return f"{spec.project}_{service}"


def _cli(args: list[str], progress: Progress, timeout_s: float = 600) -> str:
    progress.step(" ".join(["docker", *args[:3]]))
    try:
        return run_streaming(["docker", *args], progress, timeout_s=timeout_s)
    except CommandFailed as exc:
        raise SwarmError(
            f"docker {args[0]} {args[1]} failed ({exc.code}): {exc.last_line}"
        ) from None
    except TimeoutError as exc:
        raise SwarmError(str(exc)) from None


def _get_service(engine: Any, name: str) -> Any:
    """``engine.services.get(name)`` (the SDK's method is untyped)."""
    return engine.services.get(name)


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


def services(spec: Stack) -> dict[str, Any]:
    """The spec's swarm services that exist (by spec name), as the SDK's objects."""
    found: dict[str, Any] = {}
    with closing(docker_host.client()) as engine:
        for service in spec.services:
            try:
                found[service.name] = _get_service(engine, full_name(spec, service.name))
            except NotFound:
                continue
    return found


def _owner_of(service: Any) -> str | None:
    labels = (service.attrs.get("Spec") or {}).get("Labels") or {}
    owner = labels.get(OWNER_LABEL)
    return str(owner) if owner else None


def require_owned(spec: Stack, owner: str | None, action: str) -> dict[str, Any]:
    """The spec's services that exist, each proven ours by its owner label."""
    found = services(spec)
    foreign = {name: _owner_of(s) for name, s in found.items() if _owner_of(s) != owner}
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


def gwbridge_ip(container_id: str) -> str:
    """A task container's address on ``docker_gwbridge``: the host's way in (overlay
    addresses are not reachable from the host)."""
    with closing(docker_host.client()) as engine:
        attached = engine.networks.get(GWBRIDGE).attrs.get("Containers") or {}
    entry = attached.get(container_id)
    if not entry:
        raise SwarmError(f"container {container_id[:12]} has no {GWBRIDGE} address")
    return str(entry["IPv4Address"]).split("/")[0]


def server_address(spec: Stack, service: str) -> str:
    found = task_containers(spec, service)
    if not found:
        raise SwarmError(
            f"the swarm stack's {service} has no running task on this node: run invoke up "
            f"(or run invoke on the node labelled {STORAGE_NODE_LABEL}=true)"
        )
    return gwbridge_ip(str(found[0]["Id"]))


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


def by_image_id(spec: Stack) -> Stack:
    """Every service whose image exists locally runs it by id (see the module docstring)."""
    ids: dict[str, str] = {}
    with closing(docker_host.client()) as engine:
        for service in spec.services:
            try:
                ids[service.name] = str(engine.images.get(service.image).id)
            except NotFound:
                continue
    return replace(
        spec,
        services=tuple(replace(s, image=ids.get(s.name, s.image)) for s in spec.services),
    )


def adopt_network(spec: Stack) -> Stack:
    """An existing overlay of the network's name that this stack did not create is used as
    ``external`` (never removed by ``down``)."""
    with closing(docker_host.client()) as engine:
        networks = []
        for network in spec.networks:
            found = [
                n for n in engine.networks.list(names=[network.name]) if n.name == network.name
            ]
            ours = (
                found and (found[0].attrs.get("Labels") or {}).get(NAMESPACE_LABEL) == spec.project
            )
            networks.append(replace(network, external=True) if found and not ours else network)
    return replace(spec, networks=tuple(networks))


def converge(spec: Stack, timeout_s: float, progress: Progress) -> None:
    """Wait (bounded) until every service runs its replicas and no update is in progress."""
    deadline = time.monotonic() + timeout_s
    reported = ""
    while True:
        waiting = []
        with closing(docker_host.client()) as engine:
            for service in spec.services:
                try:
                    found = _get_service(engine, full_name(spec, service.name))
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


def prune_secrets(spec: Stack, keep: set[str]) -> list[str]:
    """Remove this stack's swarm secrets that are not ``keep`` (superseded versions); one
    still in use by a task that is going away is left for the next ``up``."""
    removed = []
    with closing(docker_host.client()) as engine:
        for secret in engine.secrets.list(filters={"label": f"{NAMESPACE_LABEL}={spec.project}"}):
            if secret.name in keep:
                continue
            try:
                secret.remove()
                removed.append(str(secret.name))
            except APIError:
                continue
    return removed


def deploy_stack(
    spec: Stack, values: Mapping[str, str], progress: Progress, secrets_root: Path | None = None
) -> dict[str, str]:
    """Write the secret files, render the stack file and ``docker stack deploy`` it."""
    secrets_file.write_secret_files(spec, values, secrets_root)
    names = compose.swarm_secret_names(spec, values)
    path = stack_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    document = compose.render(spec, path.parent, secrets_root, swarm_secrets=names)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(compose.dump(document), encoding="utf-8")
    temporary.replace(path)
    args = ["stack", "deploy", "--prune", "--resolve-image", "never", "-c", str(path), spec.project]
    _cli(args, progress)
    return names


class SwarmEngine:
    """``invoke up --engine swarm``: see the module docstring."""

    kind: ClassVar[EngineKind] = EngineKind.SWARM

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if environ is None else environ

    def available(self) -> bool:
        if not docker_host.daemon_answers():
            return False
        try:
            state, manager = swarm_state()
        except Exception:  # a probe: any failure means "not here"
            return False
        return state == "active" and manager

    def _config(self, recorded: record.StackRecord | None = None) -> StackConfig:
        config = (recorded.config if recorded is not None else None) or config_from_env(self._env)
        return replace(config, target="swarm").validate()

    def _spec(self, config: StackConfig, owner: str | None) -> Stack:
        return build_stack(config, owner)

    def preview(self, progress: Progress) -> str:
        require_manager()
        config = self._config()
        owner = record.checkout_owner() or "checkout:<new>"
        spec = self._spec(config, owner)
        driver = network_driver(config.network_name)
        lines = [f"swarm stack {spec.project}, owner {owner}"]
        if driver == "bridge":
            lines.append(f"  REFUSED: {BRIDGE_REFUSAL.format(name=config.network_name)}")
        else:
            state = f"use the existing {driver}" if driver else "create (overlay, attachable)"
            lines.append(f"  network {config.network_name}: {state}")
        found = services(spec)
        for service in spec.services:
            now = found.get(service.name)
            action = "create"
            if now is not None:
                theirs = _owner_of(now)
                action = f"REFUSED: owned by {theirs}" if theirs != owner else "update if changed"
            replicas = service.deploy.replicas
            lines.append(f"  service {full_name(spec, service.name)} ({replicas}x): {action}")
        return "\n".join(lines)

    def up(self, request: UpRequest, progress: Progress) -> StackEndpoints:
        require_manager()
        config = self._config()
        previous = record.load()
        if previous is not None and previous.engine is not self.kind:
            raise EngineError(
                f"this checkout runs a {previous.engine} stack: run invoke down first"
            )
        values = secrets_from_env(self._env, secrets_for(config.mode))
        check_network(config)  # before anything is created
        owner = record.checkout_owner(create=True)
        spec = self._spec(config, owner)
        require_owned(spec, owner, "start")
        if config.mode == "managed" and previous is not None and previous.mode == "external":
            pass  # external -> managed creates the servers: nothing to hand over
        if config.mode == "external" and previous is not None and previous.mode == "managed":
            raise EngineError(
                "refusing to switch to mode=external: this checkout's swarm stack manages the "
                "servers; run `invoke down` (volumes kept) first"
            )
        label_storage_node(progress)
        if request.build:
            images.seed_base_image(config.base_image, progress=progress)
            images.build_all(spec, progress=progress)
        record.save(record.StackRecord(self.kind, owner, spec.project, config))
        deployed = adopt_network(by_image_id(spec))
        progress.step("images run by id: locally built images need no registry on one node")
        names = deploy_stack(deployed, values, progress)
        converge(deployed, request.timeout_s, progress)
        removed = prune_secrets(deployed, set(names.values()))
        if removed:
            progress.step(f"removed superseded secret versions: {', '.join(removed)}")
        if config.mode == "managed":
            self._ensure_roles(spec, config, values, progress)
        endpoints = self._endpoints(spec, config, values)
        wait_dependencies(endpoints, request.timeout_s, progress)
        return endpoints

    def _ensure_roles(
        self, spec: Stack, config: StackConfig, values: Mapping[str, str], progress: Progress
    ) -> None:
        progress.step(
            f"roles: {config.postgres_owner_user} (owner), {config.postgres_app_user} (app)"
        )
        containers.ensure_roles(config, values, server_address(spec, config.postgres_host))

    def _endpoints(
        self, spec: Stack, config: StackConfig, values: Mapping[str, str]
    ) -> StackEndpoints:
        if config.mode == "managed":
            pg = server_address(spec, config.postgres_host)
            redis = server_address(spec, config.redis_host)
        else:  # the shared servers: a plain container or a task of another stack, on this node
            pg = _any_address(config.postgres_host, config.network_name)
            redis = _any_address(config.redis_host, config.network_name)
        port = next(
            p for p in spec.service(config.proxy_name).ports if p.container_port == API_PORT
        )
        api_url = f"http://127.0.0.1:{port.host_port}"  # host mode: on every address
        return containers.endpoints_at(config, values, self.kind, pg, redis, api_url)

    def attach(self, recorded: record.StackRecord) -> StackEndpoints:
        require_manager()
        config = self._config(recorded)
        spec = self._spec(config, recorded.owner)
        require_owned(spec, recorded.owner, "use the stack")
        values = secrets_from_env(self._env, secrets_for(config.mode))
        return self._endpoints(spec, config, values)

    def down_plan(self, recorded: record.StackRecord) -> DownPlan:
        require_manager()
        config = self._config(recorded)
        spec = self._spec(config, recorded.owner)
        found = require_owned(spec, recorded.owner, "take the stack down")
        deletable: list[str] = []
        kept: list[str] = []
        with closing(docker_host.client()) as engine:
            for volume in spec.volumes:
                try:
                    labels = engine.volumes.get(volume.name).attrs.get("Labels") or {}
                except NotFound:
                    continue
                ours = not volume.external and labels.get(NAMESPACE_LABEL) == spec.project
                (deletable if ours else kept).append(volume.name)
        return DownPlan(
            self.kind,
            tuple(deletable),
            tuple(kept),
            tuple(full_name(spec, name) for name in found),
        )

    def down(
        self, recorded: record.StackRecord, *, remove_volumes: bool, progress: Progress
    ) -> None:
        plan = self.down_plan(recorded)  # proves ownership
        config = self._config(recorded)
        spec = self._spec(config, recorded.owner)
        _cli(["stack", "rm", spec.project], progress)
        _wait_gone(spec, progress)
        if remove_volumes:
            with closing(docker_host.client()) as engine:
                for name in plan.deletable:
                    progress.step(f"removing volume {name}")
                    engine.volumes.get(name).remove()

    def checks(self, endpoints: StackEndpoints) -> list[CheckResult]:
        from infra.verify_containers import run_swarm_checks

        found = record.load()
        config = self._config(found)
        spec = self._spec(config, found.owner if found else None)
        return run_swarm_checks(config, spec)

    def deploy(
        self, recorded: record.StackRecord, request: DeployRequest, progress: Progress
    ) -> None:
        """The API service onto the current image, start-first, one task at a time."""
        require_manager()
        config = self._config(recorded)
        spec = self._spec(config, recorded.owner)
        found = require_owned(spec, recorded.owner, "deploy")
        if config.api_name not in found:
            raise SwarmError("the API service is not running: run invoke up")
        if request.build:
            images.build_all(spec, progress=progress, only={config.api_name})
        new = by_image_id(spec).service(config.api_name).image
        rollout_api(spec, config, new, request, progress)


def rollout_api(
    spec: Stack, config: StackConfig, image: str, request: DeployRequest, progress: Progress
) -> None:
    name = full_name(spec, config.api_name)
    with closing(docker_host.client()) as engine:
        service = _get_service(engine, name)
        current = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        before = (service.attrs.get("UpdateStatus") or {}).get("StartedAt")
    if current == image:
        progress.step(f"{name} already runs {image[:19]}: nothing to roll")
        return
    per_task = float(request.deploy_timeout_s or config.deploy_timeout_s)
    monitor = spec.service(config.api_name).deploy.monitor_s
    budget = config.api_replicas * (per_task + monitor + 5)
    progress.step(f"{name}: rolling {config.api_replicas} task(s) onto {image[:19]} (start-first)")
    _cli(["service", "update", "--detach", "--no-resolve-image", "--image", image, name], progress)
    state = _wait_update(name, before, budget, progress)
    if state == "completed":
        progress.step(f"{name}: every task on the new image")
        return
    if state in {"updating", "paused"}:
        progress.step(f"{name}: not healthy within {budget:.0f}s ({state}): rolling back")
        _cli(["service", "rollback", "--detach", name], progress)
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
            status = _get_service(engine, name).attrs.get("UpdateStatus") or {}
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


def _wait_gone(spec: Stack, progress: Progress, timeout_s: float = 120) -> None:
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


def _any_address(name: str, network: str) -> str:
    """External mode: a shared server on this node, a plain container (its address on the
    attachable overlay is not reachable from here either: its gwbridge one is)."""
    try:
        attrs = docker_host.inspect(name)
    except NotFound:
        raise SwarmError(f"mode=external: no container {name} on this node") from None
    return gwbridge_ip(str(attrs["Id"]))
