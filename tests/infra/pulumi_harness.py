"""Run the Pulumi program under Pulumi's official mocks and record what it registers.

``pulumi.runtime.set_mocks`` replaces the engine and the provider: nothing is created, every
resource registration reaches :class:`RecordingMocks` with its inputs (secrets still marked
as secrets) and the monitor records each resource's dependencies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor

from infra.pulumi_program import Program, declare

PROJECT = "media-analysis-kit"
PASSWORDS = {
    "postgresPassword": "pg pa$$/word:1",
    "postgresOwnerPassword": "owner pa:ss/3",
    "postgresAppPassword": "app p@ss w%4",
    "redisPassword": "redis@pa ss#2",
    "redisAppPassword": "redis app:pw/5",
    "apiKey": "api key/6",
}
"""Every stack secret, with characters that need quoting in a URL."""

CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
IMAGE = "docker:index/image:Image"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
GET_NETWORK = "docker:index/getNetwork:getNetwork"
PIDS_LIMIT = "pulumi-python:dynamic/media-analysis:PidsLimit"


class RecordingMocks(pulumi.runtime.Mocks):
    """Official mocks: outputs echo inputs, plus the ids a real provider would add."""

    def __init__(self, image_ids: dict[str, str] | None = None) -> None:
        super().__init__()
        self.image_ids = image_ids or {}
        self.image_tags: dict[str, str] = {}
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[pulumi.runtime.MockCallArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        outputs = dict(args.inputs)
        if args.typ == REMOTE_IMAGE:
            outputs["imageId"] = f"sha256:{args.name}"
        if args.typ == IMAGE:  # a local build: the provider sets repoDigest to the image id
            outputs["repoDigest"] = self.image_ids.get(args.name, f"sha256:{args.name}")
            self.image_tags[outputs["repoDigest"]] = args.inputs["imageName"]
        if args.typ == REMOTE_IMAGE:
            self.image_tags[outputs["imageId"]] = args.inputs["name"]
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
        self.options: dict[tuple[str, str], Options] = {}

    def RegisterResource(self, request: Any) -> Any:
        self.dependencies[request.name] = list(request.dependencies)
        self.options[(request.type, request.name)] = Options(
            retain_on_delete=bool(request.retainOnDelete),
            protect=bool(request.protect),
            delete_before_replace=bool(request.deleteBeforeReplace),
            ignore_changes=tuple(request.ignoreChanges),
        )
        return MockMonitor.RegisterResource(self, request)


@dataclass(frozen=True)
class Options:
    """The resource options the program sent with one registration (what the engine keeps)."""

    retain_on_delete: bool
    protect: bool
    delete_before_replace: bool
    ignore_changes: tuple[str, ...]


@dataclass
class Run:
    program: Program
    resources: list[pulumi.runtime.MockResourceArgs]
    calls: list[pulumi.runtime.MockCallArgs]
    dependencies: dict[str, list[str]]
    options: dict[tuple[str, str], Options] = field(default_factory=dict)
    image_tags: dict[str, str] = field(default_factory=dict)
    """Image id (what a container's ``image`` holds) -> the tag it was built or pulled as."""
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, typ: str) -> dict[str, dict[str, Any]]:
        return {r.name: r.inputs for r in self.resources if r.typ == typ}

    @property
    def containers(self) -> dict[str, dict[str, Any]]:
        return self.of_type(CONTAINER)

    def kinds(self) -> set[tuple[str, str]]:
        return {(r.typ, r.name) for r in self.resources}


def fresh_event_loop() -> None:
    """Pulumi's mocks take ``asyncio.get_event_loop()``; a test that ran ``asyncio.run`` before
    (a host-side migration in the docker tests, for one) leaves none in the main thread."""
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
        if not loop.is_closed():
            return
    except RuntimeError:
        pass
    asyncio.set_event_loop(asyncio.new_event_loop())


def run_program(
    settings: dict[str, str],
    passwords: dict[str, str] | None = None,
    image_ids: dict[str, str] | None = None,
) -> Run:
    """Declare the stack with ``settings`` (Pulumi config keys without the project prefix)
    and the given passwords (default :data:`PASSWORDS`), resolving the stack outputs;
    ``image_ids`` gives the id a local build returns, by Image resource name."""
    fresh_event_loop()
    mocks = RecordingMocks(image_ids)
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack="test", preview=False, monitor=monitor)
    secrets = PASSWORDS if passwords is None else passwords
    config = {f"{PROJECT}:{key}": value for key, value in {**settings, **secrets}.items()}
    pulumi.runtime.set_all_config(config, [f"{PROJECT}:{key}" for key in secrets])
    holder: dict[str, Any] = {}

    def program() -> pulumi.Output[Any]:
        declared = declare(pulumi.Config())
        holder["program"] = declared
        ids = [container.id for container in declared.rendered.containers.values()]
        return pulumi.Output.all(pulumi.Output.all(**declared.outputs), *ids).apply(
            lambda values: holder.update(outputs=values[0])
        )

    run_mocked(program)
    return Run(
        holder["program"],
        mocks.resources,
        mocks.calls,
        monitor.dependencies,
        monitor.options,
        mocks.image_tags,
        holder["outputs"],
    )


def run_mocked(program: Callable[[], pulumi.Output[Any]]) -> None:
    """Run ``program`` under the mocks as ``@pulumi.runtime.test`` does (its Output awaited);
    called, not used as a decorator, since the SDK's decorator is untyped."""
    pulumi.runtime.test(program)()


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


def uploads_of(run: Run, service: str) -> dict[str, dict[str, Any]]:
    """The secret files a service gets, by path: its own uploads, or (read-only root
    filesystem) those of its ``<service>-secrets`` loader container."""
    containers = run.containers
    inputs = containers.get(f"{service}-secrets") or containers[service]
    return {upload["file"]: upload for upload in unwrap(inputs.get("uploads") or [])}


def secret_files_of(run: Run, service: str) -> dict[str, tuple[str, int, int, int]]:
    """``path -> (content, uid, gid, mode)`` of a service's secret files."""
    return {
        path: (
            str(upload["content"]),
            int(upload["owner"]),
            int(upload["group"]),
            int(upload["permissions"], 8),
        )
        for path, upload in uploads_of(run, service).items()
    }
