"""The swarm engine itself (:class:`SwarmEngine`): ``invoke up --engine swarm`` and the other
tasks on a swarm stack, from the pieces in this package."""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import closing
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

from docker.errors import NotFound

from infra import docker_host, images
from infra.config import StackConfig, config_from_env, secrets_for, secrets_from_env
from infra.engines import containers, record
from infra.engines.base import DownPlan, StackEndpoints
from infra.engines.kinds import EngineError, EngineKind
from infra.engines.swarm.checks import run_swarm_checks
from infra.engines.swarm.cluster import (
    BRIDGE_REFUSAL,
    SwarmError,
    check_network,
    docker_cli,
    label_storage_node,
    network_driver,
    require_manager,
    swarm_state,
)
from infra.engines.swarm.rollout import rollout_api
from infra.engines.swarm.services import (
    any_address,
    full_name,
    owner_of,
    require_owned,
    server_address,
    services,
)
from infra.engines.swarm.stack_file import (
    NAMESPACE_LABEL,
    adopt_network,
    by_image_id,
    deploy_stack,
    prune_secrets,
)
from infra.engines.swarm.waits import converge, wait_dependencies, wait_gone
from infra.progress import Progress
from infra.spec import Stack
from infra.stack import API_PORT, build_stack
from infra.verify import CheckResult

if TYPE_CHECKING:
    from infra.engines.base import DeployRequest, UpRequest


class SwarmEngine:
    """``invoke up --engine swarm``: see the package docstring."""

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
                theirs = owner_of(now)
                action = f"REFUSED: owned by {theirs}" if theirs != owner else "update if changed"
            replicas = service.deploy.replicas
            lines.append(f"  service {full_name(spec, service.name)} ({replicas}x): {action}")
        return "\n".join(lines)

    def up(self, request: UpRequest, progress: Progress) -> StackEndpoints:
        require_manager()
        config = self._config()
        previous = record.load_for(self.kind)
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
            pg = any_address(config.postgres_host, config.network_name)
            redis = any_address(config.redis_host, config.network_name)
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
        docker_cli(["stack", "rm", spec.project], progress)
        wait_gone(spec, progress)
        if remove_volumes:
            with closing(docker_host.client()) as engine:
                for name in plan.deletable:
                    progress.step(f"removing volume {name}")
                    engine.volumes.get(name).remove()

    def checks(self, endpoints: StackEndpoints) -> list[CheckResult]:
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
