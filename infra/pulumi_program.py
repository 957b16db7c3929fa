"""The Pulumi program: stack config -> spec -> ``pulumi_docker`` resources -> stack outputs.

``main()`` is what ``pulumi up`` runs (via ``infra/__main__.py``): it reads the stack config
(passwords with ``require_secret``, so they stay encrypted in state and outputs), builds the
spec with :func:`infra.stack.build_stack` and registers its resources
(:mod:`infra.pulumi_resources`): containers (:func:`~infra.pulumi_resources.render`), or with
``target: swarm`` swarm services (:func:`~infra.pulumi_resources.render_swarm`). A container's
pids limit is a :class:`PidsLimit`: the provider's Container has no such input, so it is
applied through the Engine API's container update right after creation. The managed servers
are retained on delete (:mod:`infra.pulumi_resources.containers`).

:class:`PidsLimit`'s provider stays in this module: Pulumi keeps a dynamic provider in the
stack's state as a pickle that names its module, and reads it back to update or delete.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pulumi
import pulumi.dynamic

from infra.config import ConfigError, config_from_source, pulumi_key
from infra.pulumi_resources import Rendered, canonical_cpus, render, render_swarm
from infra.spec import Stack
from infra.stack import API_PORT, build_stack


class _PidsLimitProvider(pulumi.dynamic.ResourceProvider):
    """Sets ``HostConfig.PidsLimit`` of a container through ``POST /containers/{id}/update``
    (what ``docker update --pids-limit`` does). Runs in the Pulumi program's process, against
    the engine ``docker.from_env()`` finds (``DOCKER_HOST``, else the local socket): the same
    engine the docker provider uses by default."""

    serialize_as_secret_always = False

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        _update_pids_limit(str(props["container_id"]), int(props["pids_limit"]))
        return pulumi.dynamic.CreateResult(id_=f"{props['container_id']}-pids", outs=props)

    def diff(
        self, _id: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.DiffResult:
        changed = [key for key in ("container_id", "pids_limit") if olds.get(key) != news.get(key)]
        return pulumi.dynamic.DiffResult(
            changes=bool(changed),
            replaces=[key for key in changed if key == "container_id"],
            delete_before_replace=False,
        )

    def update(
        self, _id: str, _olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.UpdateResult:
        _update_pids_limit(str(news["container_id"]), int(news["pids_limit"]))
        return pulumi.dynamic.UpdateResult(outs=news)


def _update_pids_limit(container_id: str, limit: int) -> None:
    import docker as docker_sdk  # the Docker SDK (infra extra), not pulumi_docker

    client = docker_sdk.from_env(timeout=60)
    try:
        api = client.api
        url = f"{api.base_url}/v{api.api_version}/containers/{container_id}/update"
        api.post(url, json={"PidsLimit": limit}, timeout=60).raise_for_status()
    finally:
        client.close()


class PidsLimit(pulumi.dynamic.Resource, module="media-analysis", name="PidsLimit"):
    """The pids cgroup limit of one container (``pids_limit`` in compose)."""

    def __init__(
        self,
        name: str,
        *,
        container_id: pulumi.Input[str],
        pids_limit: int,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {"container_id": container_id, "pids_limit": pids_limit}
        super().__init__(_PidsLimitProvider(), name, props, opts)


def limit_pids(spec: Stack, rendered: Rendered) -> None:
    """A :class:`PidsLimit` for each rendered container whose service has one."""
    for service in spec.ordered_services():
        container = rendered.containers[service.name]
        if service.limits.pids is not None:
            rendered.pids_limits[service.name] = PidsLimit(
                f"{service.name}-pids",
                container_id=container.id,
                pids_limit=service.limits.pids,
                opts=pulumi.ResourceOptions(depends_on=[container]),
            )


@dataclass
class Program:
    """What one run of the program declared: the spec, its resources and the stack outputs."""

    spec: Stack
    rendered: Rendered
    outputs: dict[str, pulumi.Input[object]]


def declare(config: pulumi.Config) -> Program:
    """Read the stack config, build the spec, register its resources; no exports yet."""
    try:
        stack_config = config_from_source(config.get, pulumi_key)
    except ConfigError as exc:
        raise pulumi.RunError(str(exc)) from None
    try:
        canonical_cpus(stack_config.api_cpus)
    except ValueError as exc:
        raise pulumi.RunError(f"{pulumi_key('api_cpus')}: {exc}") from None
    spec = build_stack(stack_config, stack_owner())
    secrets = {secret.name: config.require_secret(secret.setting) for secret in spec.secrets}
    managed = stack_config.mode == "managed"
    servers = frozenset({stack_config.postgres_host, stack_config.redis_host} if managed else ())
    if stack_config.target == "swarm":
        rendered = render_swarm(spec, secrets)
    else:
        rendered = render(spec, secrets, retained=servers)
        limit_pids(spec, rendered)
    api_port = next(  # published by the proxy in front of the API replicas
        p for p in spec.service(stack_config.proxy_name).ports if p.container_port == API_PORT
    )
    outputs: dict[str, pulumi.Input[object]] = {
        "apiUrl": f"http://{api_port.host_ip}:{api_port.host_port}",
        "networkName": rendered.network_names[stack_config.network_name],
        "volumeNames": [volume.name for volume in rendered.volumes.values()],
        "mode": stack_config.mode,
        "owner": stack_owner(),
        # What `invoke` needs to reach the servers from the Docker host (their addresses are
        # looked up there): the settings in clear, the connection passwords as a secret.
        "stackConfig": asdict(stack_config),
        "connectionSecrets": pulumi.Output.secret(
            {name: secrets[name] for name in CONNECTION_SECRETS if name in secrets}
        ),
    }
    return Program(spec, rendered, outputs)


CONNECTION_SECRETS = (
    "postgres_password",
    "postgres_owner_password",
    "postgres_app_password",
    "redis_app_password",
)
"""The passwords the ``invoke`` tasks use against a running stack (role upkeep as the bootstrap
superuser in managed mode, migrations as the schema owner, checks as the app roles): exported
as one secret output, shown only with ``--show-secrets``."""


def stack_owner() -> str:
    """The owner label of this stack's containers: ``pulumi:<project>/<stack>``."""
    return f"pulumi:{pulumi.get_project()}/{pulumi.get_stack()}"


def main() -> None:
    """The Pulumi program: config -> spec -> resources -> stack outputs."""
    program = declare(pulumi.Config())
    for name, value in program.outputs.items():
        pulumi.export(name, value)
