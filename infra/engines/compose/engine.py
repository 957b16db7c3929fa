"""The compose engine itself (:class:`ComposeEngine`): ``invoke up --engine compose`` and the
other tasks on a compose stack."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import ClassVar

from infra import docker_host, images
from infra.config import StackConfig, config_from_env, secrets_for, secrets_from_env
from infra.engines import containers, record
from infra.engines.base import DeployRequest, DownPlan, StackEndpoints, UpRequest
from infra.engines.compose.project import adopt_existing, rendered_path, start, stop, volume_plan
from infra.engines.compose.rollout import Rollout
from infra.engines.kinds import EngineKind
from infra.progress import Progress
from infra.stack import api_replica_names, build_stack
from infra.verify import CheckResult, run_checks


class ComposeEngine:
    """``invoke up --engine compose``: see the package docstring."""

    kind: ClassVar[EngineKind] = EngineKind.COMPOSE

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if environ is None else environ

    def available(self) -> bool:
        return docker_host.daemon_answers()

    def _config(self) -> StackConfig:
        config = config_from_env(self._env)
        config.validate()
        return config

    def preview(self, progress: Progress) -> str:
        docker_host.require_engine()
        config = self._config()
        previous = record.load()
        containers.refuse_managed_to_external(previous, config)
        owner = record.checkout_owner() or "checkout:<new>"
        spec = adopt_existing(build_stack(config, owner))
        lines = [f"compose project {spec.project}, owner {owner}"]
        for network in spec.networks:
            state = "use existing" if network.external else "create if missing"
            lines.append(f"  network {network.name}: {state}")
        for volume in spec.volumes:
            state = "use existing (kept)" if volume.external else "create if missing"
            lines.append(f"  volume {volume.name}: {state}")
        found = {c.name: c for c in containers.find_containers(s.name for s in spec.services)}
        for service in spec.services:
            now = found.get(service.name)
            if now is None:
                action = "create"
            elif now.owner not in {owner, None}:
                action = f"REFUSED: owned by {now.owner}"
            else:
                action = f"update if changed (now {now.status})"
            lines.append(f"  container {service.name}: {action}")
        return "\n".join(lines)

    def up(self, request: UpRequest, progress: Progress) -> StackEndpoints:
        docker_host.require_engine()  # first: no engine makes every other problem moot
        config = self._config()
        previous = record.load_for(self.kind)
        secrets = secrets_from_env(self._env, secrets_for(config.mode))
        containers.refuse_managed_to_external(previous, config)
        owner = record.checkout_owner(create=True)
        assert owner is not None
        legacy = previous is not None and previous.owner is None
        containers.require_free_or_owned(config, owner, legacy_ok=legacy)
        if config.mode == "external":
            containers.check_external(config)
        spec = build_stack(config, owner)
        if request.build:
            images.seed_base_image(config.base_image, progress=progress)
            images.build_all(spec, progress=progress)
        # Recorded before anything starts: a failed `up` can still be taken `down`.
        record.save(record.StackRecord(self.kind, owner, spec.project, config))
        # Roles first when PostgreSQL already runs: a rotated app password is in the database
        # before the API restarts with it. On a first start the image's initdb hook made them.
        roles_done = False
        managed = config.mode == "managed"
        if managed and docker_host.container_state(config.postgres_host).healthy:
            self._ensure_roles(config, secrets, progress)
            roles_done = True
        start(spec, secrets, rendered_path(), progress)
        servers = [config.postgres_host, config.redis_host]
        progress.step(f"waiting for {', '.join(servers)} to be healthy")
        docker_host.wait_healthy(servers, timeout_s=request.timeout_s)
        if managed and not roles_done:
            self._ensure_roles(config, secrets, progress)
        return containers.endpoints(config, secrets, self.kind)

    def _ensure_roles(
        self, config: StackConfig, secrets: Mapping[str, str], progress: Progress
    ) -> None:
        progress.step(
            f"roles: {config.postgres_owner_user} (owner), {config.postgres_app_user} (app)"
        )
        containers.ensure_roles(config, secrets)

    def attach(self, recorded: record.StackRecord) -> StackEndpoints:
        docker_host.require_engine()
        config = recorded.config or self._config()
        containers.require_owned(recorded, "use the stack")
        secrets = secrets_from_env(self._env, secrets_for(config.mode))
        return containers.endpoints(config, secrets, self.kind)

    def down_plan(self, recorded: record.StackRecord) -> DownPlan:
        docker_host.require_engine()
        config = recorded.config or self._config()
        containers.require_owned(recorded, "take the stack down")
        return volume_plan(build_stack(config, recorded.owner), self.kind)

    def down(
        self, recorded: record.StackRecord, *, remove_volumes: bool, progress: Progress
    ) -> None:
        docker_host.require_engine()
        config = recorded.config or self._config()
        containers.require_owned(recorded, "take the stack down")
        stop(build_stack(config, recorded.owner), rendered_path(), remove_volumes, progress)

    def checks(self, endpoints: StackEndpoints) -> list[CheckResult]:
        return run_checks(record.config_or_env())

    def deploy(
        self, recorded: record.StackRecord, request: DeployRequest, progress: Progress
    ) -> None:
        """Roll the API replicas onto the current image one at a time, the way kamal-proxy
        does, without dropping a request: see :class:`Rollout`."""
        docker_host.require_engine()
        containers.require_owned(recorded, "deploy")
        config = recorded.config or self._config()
        secrets = secrets_from_env(self._env, secrets_for(config.mode))
        spec = build_stack(config, recorded.owner)
        if request.build:
            images.build_all(spec, progress=progress, only={config.api_name})
        rollout = Rollout(spec, config, secrets, request, progress)
        for name in api_replica_names(config):
            rollout.roll(name)
