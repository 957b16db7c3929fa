"""The compose engine: the rendered compose file on the local Docker engine, run by the
compose CLI (``docker compose`` v2 preferred; Debian bookworm packages only the v1 Python tool
``docker-compose`` 1.29, which reads the same file).

``up`` builds the images (streaming progress), renders the spec with the checkout's owner
label on every container, adopts a network or volume that exists but is not this project's
(``external: true``: used, never replaced or removed), writes the secret files and starts the
file; no secret ever reaches the CLI's arguments or environment. Tasks never start a Docker
daemon: when none answers, one line says what to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from contextlib import closing
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import ClassVar

from docker.errors import NotFound

from infra import compose, docker_host, images, proxy, secrets_file
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
from infra.progress import CommandFailed, Progress, Quiet, run_streaming
from infra.spec import Network, Stack, Volume
from infra.stack import STORAGE_VOLUME, api_replica_names, build_stack
from infra.verify_containers import CheckResult, run_checks


class ComposeError(EngineError):
    """The compose CLI is missing or a compose command failed."""


@cache
def compose_command() -> tuple[str, ...] | None:
    """The compose CLI to use: v2 (``docker compose``) when it works, else v1
    (``docker-compose``), else None."""
    candidates: list[tuple[str, ...]] = []
    if shutil.which("docker"):
        candidates.append(("docker", "compose"))
    if shutil.which("docker-compose"):
        candidates.append(("docker-compose",))
    for command in candidates:
        try:
            probe = subprocess.run(
                [*command, "version"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return command
    return None


def rendered_path() -> Path:
    """Where ``up`` renders the file it runs: beside the stack's record, so a test stack or a
    second checkout never rewrites this checkout's file."""
    return record.state_dir() / "compose.yml"


def run(
    spec: Stack,
    args: list[str],
    path: Path,
    progress: Progress | None = None,
    timeout_s: float = 600,
) -> str:
    """``<compose> -p <project> -f <path> <args>``, its output streamed to ``progress``."""
    command = compose_command()
    if command is None:
        raise ComposeError("no compose CLI: install docker-compose (apt) or the compose plugin")
    full = [*command, "-p", spec.project, "-f", str(path), *args]
    reporter = progress or Quiet()
    reporter.step(" ".join([*command, *args]))
    try:
        return run_streaming(full, reporter, timeout_s=timeout_s)
    except CommandFailed as exc:
        raise ComposeError(f"compose {args[0]} failed ({exc.code}): {exc.last_line}") from None
    except TimeoutError as exc:
        raise ComposeError(str(exc)) from None


def validate(spec: Stack, path: Path) -> None:
    """``config -q``: the CLI accepts the rendered file."""
    run(spec, ["config", "-q"], path)


def existing_resources(
    spec: Stack,
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """The labels of the spec's networks and volumes that exist on the engine (name -> labels),
    networks first."""
    networks: dict[str, dict[str, str]] = {}
    volumes: dict[str, dict[str, str]] = {}
    with closing(docker_host.client()) as engine:
        for network in spec.networks:
            for found in engine.networks.list(names=[network.name]):
                if found.name == network.name:  # the filter also matches substrings
                    networks[network.name] = dict(found.attrs.get("Labels") or {})
        for volume in spec.volumes:
            try:
                attrs = engine.volumes.get(volume.name).attrs
            except NotFound:
                continue
            volumes[volume.name] = dict(attrs.get("Labels") or {})
    return networks, volumes


def adopt_existing(spec: Stack, progress: Progress | None = None) -> Stack:
    """``spec`` with the networks and volumes that exist but are not this project's (made by
    hand, or by another project) marked external: used as they are, never removed."""
    networks, volumes = existing_resources(spec)
    adopted = compose.adopt(spec, networks, volumes)
    newly = [
        ("network", b.name)
        for b, a in zip(spec.networks, adopted.networks, strict=True)
        if a.external and not b.external
    ] + [
        ("volume", b.name)
        for b, a in zip(spec.volumes, adopted.volumes, strict=True)
        if a.external and not b.external
    ]
    for kind, name in newly:
        if progress is not None:
            progress.step(f"adopting the existing {kind} {name} (not this stack's): kept")
    return adopted


def _container_id(name: str) -> str | None:
    try:
        return str(docker_host.inspect(name)["Id"])
    except NotFound:
        return None


def start(
    spec: Stack,
    secrets: Mapping[str, str],
    path: Path,
    progress: Progress | None = None,
    secrets_root: Path | None = None,
) -> Path:
    """Write the secret files, render ``spec`` to ``path`` and start it (images must exist:
    no build, no pull). Services whose secret files changed (a rotated password) are
    recreated even when nothing else changed: compose does not see file contents, and each
    service reads its files only at start."""
    spec = adopt_existing(spec, progress)
    changed = secrets_file.write_secret_files(spec, secrets, secrets_root)
    before = {name: _container_id(name) for name in changed}
    compose.write(spec, path, secrets_root)
    validate(spec, path)
    run(spec, ["up", "-d", "--no-build", "--remove-orphans"], path, progress)
    # Recreated by that `up` (new config) or created now: they read the new files already.
    stale = [name for name, old in before.items() if old and _container_id(name) == old]
    if stale:
        if progress is not None:
            progress.step(f"secret files changed: recreating {', '.join(stale)}")
        args = ["up", "-d", "--no-build", "--no-deps", "--force-recreate", *stale]
        run(spec, args, path, progress)
    return path


def stop(
    spec: Stack, path: Path, remove_volumes: bool = False, progress: Progress | None = None
) -> None:
    """Stop and remove the spec's containers (and its own volumes with ``remove_volumes``);
    external networks and volumes, and existing ones this project did not create (adopted),
    are never touched. No ownership check: callers prove ownership first."""
    spec = adopt_existing(spec, progress)
    compose.write(spec, path)
    args = ["down", "--remove-orphans", "--timeout", "20"]
    if remove_volumes:
        args.append("--volumes")
    run(spec, args, path, progress)


def volume_plan(spec: Stack, kind: EngineKind) -> DownPlan:
    """The stack's volumes that exist, split into deletable (its own) and kept (adopted)."""
    _, existing = existing_resources(spec)
    adopted = compose.adopt(spec, {}, existing)
    present = [volume for volume in adopted.volumes if volume.name in existing]
    return DownPlan(
        kind,
        tuple(v.name for v in present if not v.external),
        tuple(v.name for v in present if v.external),
        tuple(s.name for s in spec.services),
    )


class ComposeEngine:
    """``invoke up --engine compose``: see the module docstring."""

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
        previous = record.load()
        if previous is not None and previous.engine is not self.kind:
            raise EngineError(
                f"this checkout runs a {previous.engine} stack: run invoke down first"
            )
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
        recorded = record.load()
        return run_checks(recorded.config if recorded is not None else None)

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


class Rollout:
    """One replica at a time: (1) start a surge container of the new image under the same DNS
    name, (2) wait until Docker and the proxy both see it healthy (``deploy_timeout``; if it
    never is, remove it: the old version keeps serving), (3) drain the old replica in the
    proxy (``drain_timeout``), (4) recreate the replica with the new image and wait until the
    proxy sees it UP, (5) drain and remove the surge container. At every moment at least one
    healthy replica is in the proxy's pool, and a replica is stopped only once drained."""

    def __init__(
        self,
        spec: Stack,
        config: StackConfig,
        secrets: Mapping[str, str],
        request: DeployRequest,
        progress: Progress,
    ) -> None:
        self.spec, self.config, self.secrets, self.progress = spec, config, secrets, progress
        self.deploy_timeout = float(request.deploy_timeout_s or config.deploy_timeout_s)
        self.drain_timeout = float(request.drain_timeout_s or config.drain_timeout_s)
        self.proxy = config.proxy_name

    def _address(self, name: str) -> str:
        return docker_host.container_ip(name, self.config.network_name)

    def _surge_stack(self, name: str) -> Stack:
        replica = self.spec.service(name)
        surge = replace(replica, name=f"{name}-next", depends_on={})
        return Stack(
            project=f"{self.spec.project}-surge",
            networks=(Network(self.config.network_name, external=True),),
            volumes=(Volume(STORAGE_VOLUME, external=True),),
            services=(surge,),
            secrets=self.spec.secrets,
        )

    def _healthy_in_proxy(self, name: str, timeout_s: float) -> str:
        docker_host.wait_healthy([name], timeout_s=timeout_s)
        address = self._address(name)
        proxy.wait_for(
            self.proxy,
            lambda seen: any(s.address == address and s.up and not s.draining for s in seen),
            timeout_s,
            f"the proxy routing to {name} ({address})",
        )
        return address

    def _drain(self, name: str, address: str) -> None:
        left = proxy.drain(self.proxy, address, self.drain_timeout)
        note = f" ({left} requests still open after {self.drain_timeout:.0f}s)" if left else ""
        self.progress.step(f"drained {name}{note}")

    def roll(self, name: str) -> None:
        surge = self._surge_stack(name)
        surge_name = surge.services[0].name
        surge_path = record.state_dir() / "compose-surge.yml"
        self.progress.step(f"{name}: starting {surge_name} from the new image")
        start(surge, self.secrets, surge_path, self.progress)
        try:
            self._healthy_in_proxy(surge_name, self.deploy_timeout)
        except (TimeoutError, proxy.ProxyError):
            stop(surge, surge_path, progress=self.progress)
            raise EngineError(
                f"the new image never became healthy within {self.deploy_timeout:.0f}s: "
                f"{name} keeps serving the old version (see `docker logs {name}` after a retry)"
            ) from None
        old = self._address(name)
        self._drain(name, old)
        path = rendered_path()
        compose.write(adopt_existing(self.spec), path)
        run(self.spec, ["up", "-d", "--no-deps", "--no-build", name], path, self.progress)
        self._ready_again(old)
        self._healthy_in_proxy(name, self.deploy_timeout + 60)
        self._drain(surge_name, self._address(surge_name))
        address = self._address(surge_name)
        stop(surge, surge_path, progress=self.progress)
        self._ready_again(address)
        self.progress.step(f"{name}: on the new image")

    def _ready_again(self, address: str) -> None:
        """A drained slot keeps its DRAIN flag when its container goes and DNS refills it with
        another one: clear it once the drained container is gone."""
        for server in proxy.servers(self.proxy):
            if server.draining and server.address in {address, ""}:
                proxy.command(self.proxy, f"set server {proxy.BACKEND}/{server.name} state ready")
