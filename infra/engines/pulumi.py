"""The Pulumi engine: ``pulumi up`` of this project's program (``infra/pulumi_program.py``)
on the selected stack, driven by the CLI as a user would run it.

* ``invoke preview`` is ``pulumi preview --diff``; ``invoke up`` is ``pulumi up --yes
  --diff``, which shows the same preview and then each resource as it changes; both stream.
* Endpoints come from the stack's outputs: the settings in clear, the connection passwords
  from the one secret output (read with ``--show-secrets`` into memory, never printed).
* Before ``up``: a switch of a stack that manages its servers to ``mode=external`` is refused
  (one line on the hand-over), a container of the stack's names owned by someone else is
  refused, and a retained server that the preview says must be *replaced* is removed first
  (its data is in its volume): the provider replaces containers delete-first, and a retained
  container is never deleted, so the new one would collide with its fixed name.
* ``down`` is ``pulumi destroy``; the retained servers are then removed by name (after the
  owner check), and their volumes only with ``--volumes``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from contextlib import closing
from typing import TYPE_CHECKING, Any, ClassVar

from docker.errors import NotFound

from app_patch.settings import PROJECT_ROOT
from infra import docker_host
from infra.config import ConfigError, StackConfig, config_from_source, pulumi_key
from infra.engines import containers, record
from infra.engines.base import DownPlan, StackEndpoints
from infra.engines.cli import stream_cli
from infra.engines.kinds import EngineError, EngineKind
from infra.progress import CommandFailed, Progress
from infra.stack import build_stack
from infra.verify import CheckResult, run_checks

if TYPE_CHECKING:
    from infra.engines.base import DeployRequest, UpRequest

PROJECT = "media-analysis-kit"  # Pulumi.yaml's name
CONTAINER_TYPE = "docker:index/container:Container"
NO_DEPLOY = (
    "invoke deploy is the compose engine's rolling update; on Pulumi run `invoke up` "
    "(pulumi up replaces the API containers delete-first: the proxy answers 503 "
    "while no replica runs)"
)


def _cli() -> str:
    found = shutil.which("pulumi")
    if found is None:
        raise EngineError("the Pulumi CLI is not installed (https://www.pulumi.com/docs/install/)")
    return found


def _run(args: Sequence[str], timeout_s: float = 120) -> str:
    """A short, quiet Pulumi command (stack name, outputs, config); its output."""
    command = [_cli(), *args, "--non-interactive"]
    try:
        result = subprocess.run(
            command,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EngineError(f"`pulumi {args[0]}` did not answer within {timeout_s:.0f}s") from None
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise EngineError(f"`pulumi {' '.join(args[:2])}` failed: {detail}")
    return result.stdout


def _stream(args: Sequence[str], progress: Progress, timeout_s: float = 1800) -> str:
    """A long Pulumi command (preview, up, destroy), its output streamed to ``progress``."""
    return stream_cli(
        [_cli(), *args, "--non-interactive"],
        progress,
        shown=" ".join(["pulumi", *args]),
        error=EngineError,
        failed=lambda exc: f"`pulumi {args[0]}` failed: {_last_error(exc)}",
        timeout_s=timeout_s,
        cwd=PROJECT_ROOT,
    )


def _last_error(failed: CommandFailed) -> str:
    """The last ``error:`` line Pulumi printed, else its last line."""
    errors = [line.strip() for line in failed.tail.splitlines() if "error:" in line]
    return (errors or [failed.last_line])[-1]


def stack_selected() -> bool:
    """The Pulumi CLI exists and has a current stack in this project (a probe)."""
    if shutil.which("pulumi") is None:
        return False
    try:
        return bool(_run(["stack", "--show-name"], timeout_s=60).strip())
    except EngineError:
        return False


def owner_of(stack_name: str) -> str:
    """The owner label the program gives this stack's containers (``stack_owner`` there)."""
    return f"pulumi:{PROJECT}/{stack_name.rsplit('/', 1)[-1]}"


def config_from_values(values: Mapping[str, Any]) -> StackConfig:
    """A :class:`StackConfig` from ``pulumi config --json`` (keys ``<project>:<key>``) or from
    the ``stackConfig`` output (field names)."""
    prefix = f"{PROJECT}:"
    if any(key.startswith(prefix) for key in values):
        plain = {
            key.removeprefix(prefix): str(item.get("value", "")) if isinstance(item, dict) else ""
            for key, item in values.items()
        }
        return config_from_source(plain.get, pulumi_key)
    known: dict[str, Any] = {
        key: value for key, value in values.items() if key in StackConfig.__dataclass_fields__
    }
    return StackConfig(**known).validate()


def switch_problem(outputs: Mapping[str, Any], config: StackConfig) -> str | None:
    """Why ``up`` must refuse: the deployed stack manages its servers (output ``mode``) and
    the config now says ``external``. None when the change is safe."""
    if outputs.get("mode") != "managed" or config.mode != "external":
        return None
    return (
        "refusing to switch to mode=external: this Pulumi stack manages "
        f"{config.postgres_host} and {config.redis_host} (mode=managed); to hand them over, "
        "run `pulumi state delete` on their Container, Volume and Network resources (they keep "
        "running, no longer managed), then `pulumi up` with mode=external"
    )


def retained_replacements(preview: Mapping[str, Any], servers: Sequence[str]) -> list[str]:
    """The servers (by container name) that ``pulumi preview --json`` says it will replace."""
    doomed: list[str] = []
    for step in preview.get("steps") or []:
        urn = str(step.get("urn", ""))
        if step.get("op") != "replace" or f"::{CONTAINER_TYPE}::" not in urn:
            continue
        name = urn.rsplit("::", 1)[-1]
        if name in servers:
            doomed.append(name)
    return doomed


class PulumiEngine:
    kind: ClassVar[EngineKind] = EngineKind.PULUMI

    def available(self) -> bool:
        return stack_selected()

    def _stack_name(self) -> str:
        name = _run(["stack", "--show-name"]).strip()
        if not name:
            raise EngineError("no Pulumi stack selected: run `pulumi stack init dev` (or select)")
        return name

    def _config(self) -> StackConfig:
        try:
            return config_from_values(json.loads(_run(["config", "--json"]) or "{}"))
        except ConfigError as exc:
            raise EngineError(str(exc)) from None

    def _outputs(self, show_secrets: bool = False) -> dict[str, Any]:
        args = ["stack", "output", "--json"] + (["--show-secrets"] if show_secrets else [])
        try:
            found: dict[str, Any] = json.loads(_run(args) or "{}")
        except json.JSONDecodeError:
            return {}
        return found

    def preview(self, progress: Progress) -> str:
        return _stream(["preview", "--diff"], progress)

    def up(self, request: UpRequest, progress: Progress) -> StackEndpoints:
        docker_host.require_engine()  # the provider talks to the same engine
        record.load_for(self.kind)
        stack = self._stack_name()
        owner = owner_of(stack)
        config = self._config()
        problem = switch_problem(self._outputs(), config)
        if problem:
            raise EngineError(problem)
        containers.require_free_or_owned(config, owner, legacy_ok=False)
        servers = [config.postgres_host, config.redis_host] if config.mode == "managed" else []
        if servers:
            planned = json.loads(_run(["preview", "--json"], timeout_s=1800) or "{}")
            for name in retained_replacements(planned, servers):
                progress.step(f"{name} must be replaced: removing it first (its data is kept)")
                _remove_container(name)
        record.save(record.StackRecord(self.kind, owner, stack, config))
        _stream(["up", "--yes", "--diff"], progress)
        outputs = self._outputs(show_secrets=True)
        config = config_from_values(outputs.get("stackConfig") or {}) if outputs else config
        secrets: Mapping[str, str] = outputs.get("connectionSecrets") or {}
        if config.mode == "managed" and "postgres_password" in secrets:
            progress.step("roles: ensuring the owner and app roles")
            containers.ensure_roles(config, secrets)
        record.save(record.StackRecord(self.kind, owner, stack, config))
        return containers.endpoints(config, secrets, self.kind)

    def attach(self, recorded: record.StackRecord) -> StackEndpoints:
        docker_host.require_engine()
        containers.require_owned(recorded, "use the stack")
        outputs = self._outputs(show_secrets=True)
        if not outputs:
            raise EngineError("the Pulumi stack has no outputs: run invoke up")
        config = config_from_values(outputs.get("stackConfig") or {})
        return containers.endpoints(config, outputs.get("connectionSecrets") or {}, self.kind)

    def down_plan(self, recorded: record.StackRecord) -> DownPlan:
        docker_host.require_engine()
        found = containers.require_owned(recorded, "take the stack down")
        config = recorded.config or self._config()
        spec = build_stack(config)
        volumes = [v.name for v in spec.volumes if not v.external]
        volumes += [f"{s.name}-secrets" for s in spec.services if s.hardening.read_only]
        present = tuple(name for name in volumes if _volume_exists(name))
        return DownPlan(self.kind, present, (), tuple(c.name for c in found))

    def down(
        self, recorded: record.StackRecord, *, remove_volumes: bool, progress: Progress
    ) -> None:
        plan = self.down_plan(recorded)
        _stream(["destroy", "--yes"], progress)
        for name in plan.containers:  # the retained servers outlive destroy
            _remove_container(name)
        if remove_volumes:
            for name in plan.deletable:
                progress.step(f"deleting volume {name}")
                _remove_volume(name)

    def deploy(
        self, recorded: record.StackRecord, request: DeployRequest, progress: Progress
    ) -> None:
        raise EngineError(NO_DEPLOY)

    def checks(self, endpoints: StackEndpoints) -> list[CheckResult]:
        return run_checks(record.config_or_env())


def _remove_container(name: str) -> None:
    with closing(docker_host.client()) as engine:
        try:
            engine.containers.get(name).remove(force=True)
        except NotFound:
            return


def _volume_exists(name: str) -> bool:
    with closing(docker_host.client()) as engine:
        try:
            engine.volumes.get(name)
        except NotFound:
            return False
    return True


def _remove_volume(name: str) -> None:
    with closing(docker_host.client()) as engine:
        try:
            engine.volumes.get(name).remove()
        except NotFound:
            return
