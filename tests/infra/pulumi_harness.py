"""Run the Pulumi program under Pulumi's official mocks and record what it registers.

``pulumi.runtime.set_mocks`` replaces the engine and the provider: nothing is created, every
resource registration reaches :class:`RecordingMocks` with its inputs (secrets still marked
as secrets) and the monitor records each resource's dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor

from infra.pulumi_program import Program, declare

PROJECT = "media-analysis-kit"
PASSWORDS = {"postgresPassword": "pg pa$$/word:1", "redisPassword": "redis@pa ss#2"}

CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
IMAGE = "docker:index/image:Image"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
GET_NETWORK = "docker:index/getNetwork:getNetwork"


class RecordingMocks(pulumi.runtime.Mocks):
    """Official mocks: outputs echo inputs, plus the ids a real provider would add."""

    def __init__(self) -> None:
        super().__init__()
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[pulumi.runtime.MockCallArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        outputs = dict(args.inputs)
        if args.typ == REMOTE_IMAGE:
            outputs["imageId"] = f"sha256:{args.name}"
        return f"{args.name}-id", outputs

    def call(
        self, args: pulumi.runtime.MockCallArgs
    ) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        self.calls.append(args)
        if args.token == GET_NETWORK:
            network = {"id": "existing-network-id", "name": args.args["name"], "driver": "bridge"}
            return network, []
        return {}, []


class RecordingMonitor(MockMonitor):
    """The official mock monitor, also keeping each registration's dependency URNs."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.dependencies: dict[str, list[str]] = {}

    def RegisterResource(self, request: Any) -> Any:
        self.dependencies[request.name] = list(request.dependencies)
        return super().RegisterResource(request)


@dataclass
class Run:
    program: Program
    resources: list[pulumi.runtime.MockResourceArgs]
    calls: list[pulumi.runtime.MockCallArgs]
    dependencies: dict[str, list[str]]
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, typ: str) -> dict[str, dict[str, Any]]:
        return {r.name: r.inputs for r in self.resources if r.typ == typ}

    @property
    def containers(self) -> dict[str, dict[str, Any]]:
        return self.of_type(CONTAINER)

    def kinds(self) -> set[tuple[str, str]]:
        return {(r.typ, r.name) for r in self.resources}


def run_program(settings: dict[str, str], passwords: dict[str, str] | None = None) -> Run:
    """Declare the stack with ``settings`` (Pulumi config keys without the project prefix)
    and the given passwords (default :data:`PASSWORDS`), resolving the stack outputs."""
    mocks = RecordingMocks()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack="test", preview=False, monitor=monitor)
    secrets = PASSWORDS if passwords is None else passwords
    config = {f"{PROJECT}:{key}": value for key, value in {**settings, **secrets}.items()}
    pulumi.runtime.set_all_config(config, [f"{PROJECT}:{key}" for key in secrets])
    holder: dict[str, Any] = {}

    @pulumi.runtime.test
    def program() -> pulumi.Output[Any]:
        declared = declare(pulumi.Config())
        holder["program"] = declared
        ids = [container.id for container in declared.rendered.containers.values()]
        return pulumi.Output.all(pulumi.Output.all(**declared.outputs), *ids).apply(
            lambda values: holder.update(outputs=values[0])
        )

    program()
    return Run(
        holder["program"], mocks.resources, mocks.calls, monitor.dependencies, holder["outputs"]
    )


def is_secret(value: Any) -> bool:
    """True for a value the SDK sent to the engine wrapped as a secret."""
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


def unwrap(value: Any) -> Any:
    """The plain value inside a secret wrapper (recursively)."""
    if is_secret(value):
        return unwrap(value["value"])
    if isinstance(value, dict):
        return {key: unwrap(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unwrap(item) for item in value]
    return value


def env_of(inputs: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in unwrap(inputs.get("envs") or []))
