"""Render a :class:`~infra.spec.Stack` as ``pulumi_docker`` resources, and the stack program.

``main()`` is what ``pulumi up`` runs (via ``infra/__main__.py``): it reads the stack config
(passwords with ``require_secret``, so they stay encrypted in state and outputs), builds the
spec with :func:`infra.stack.build_stack` and registers:

* the network (``docker.Network``), or in external mode only a lookup (``get_network``);
* the volumes (``docker.Volume``);
* one image per service (``docker.Image`` built locally without push, or ``docker.RemoteImage``);
* one ``docker.Container`` per service, waiting for its healthcheck (``wait=True``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pulumi
import pulumi_docker as docker

from infra.config import ConfigError, config_from_source, pulumi_key
from infra.spec import Healthcheck, Service, Stack
from infra.stack import API_PORT, build_stack

REPO_ROOT = Path(__file__).resolve().parent.parent
WAIT_TIMEOUT_S = 180
_LabelArgs = TypeVar(
    "_LabelArgs", docker.NetworkLabelArgs, docker.VolumeLabelArgs, docker.ContainerLabelArgs
)


@dataclass
class Rendered:
    """The resources registered for a spec, by spec name (for outputs and tests)."""

    network_names: dict[str, pulumi.Output[str]] = field(default_factory=dict)
    networks: dict[str, docker.Network] = field(default_factory=dict)
    volumes: dict[str, docker.Volume] = field(default_factory=dict)
    images: dict[str, docker.Image | docker.RemoteImage] = field(default_factory=dict)
    containers: dict[str, docker.Container] = field(default_factory=dict)
    envs: dict[str, pulumi.Output[list[str]]] = field(default_factory=dict)


def render(
    spec: Stack, secrets: Mapping[str, pulumi.Output[str]], root: Path = REPO_ROOT
) -> Rendered:
    """Register the resources for ``spec``; ``secrets`` maps secret names to outputs."""
    rendered = Rendered()
    for network in spec.networks:
        if network.external:
            found = docker.get_network_output(name=network.name)
            rendered.network_names[network.name] = found.name
        else:
            resource = docker.Network(
                network.name,
                name=network.name,
                driver=network.driver,
                labels=_labels(network.labels, docker.NetworkLabelArgs),
            )
            rendered.networks[network.name] = resource
            rendered.network_names[network.name] = resource.name
    for volume in spec.volumes:
        if volume.external:
            continue
        rendered.volumes[volume.name] = docker.Volume(
            volume.name,
            name=volume.name,
            labels=_labels(volume.labels, docker.VolumeLabelArgs),
        )
    for service in spec.ordered_services():
        rendered.images[service.name] = _image(service, root)
        rendered.envs[service.name] = _envs(service, secrets)
        rendered.containers[service.name] = _container(service, rendered)
    return rendered


def _image(service: Service, root: Path) -> docker.Image | docker.RemoteImage:
    if service.build is None:
        return docker.RemoteImage(f"{service.name}-image", name=service.image, keep_locally=True)
    context = (root / service.build.context).resolve()
    return docker.Image(
        f"{service.name}-image",
        image_name=service.image,
        skip_push=True,
        build=docker.DockerBuildArgs(
            context=str(context),
            dockerfile=str(context / service.build.dockerfile),
            args=dict(service.build.args),
        ),
    )


def _envs(service: Service, secrets: Mapping[str, pulumi.Output[str]]) -> pulumi.Output[list[str]]:
    """``KEY=value`` strings; secret outputs make the whole list a secret output."""
    names = sorted({name for value in service.secret_env.values() for name in value.secret_names()})
    plain = [f"{key}={value}" for key, value in service.env.items()]
    if not names:
        return pulumi.Output.from_input(plain)

    def resolve(values: list[str]) -> list[str]:
        resolved = dict(zip(names, values, strict=True))
        return plain + [
            f"{key}={value.resolve(resolved)}" for key, value in service.secret_env.items()
        ]

    resolved: pulumi.Output[list[str]] = pulumi.Output.all(*(secrets[n] for n in names)).apply(
        resolve
    )
    return pulumi.Output.secret(resolved)


def _container(service: Service, rendered: Rendered) -> docker.Container:
    image = rendered.images[service.name]
    image_ref = image.image_name if isinstance(image, docker.Image) else image.image_id
    depends_on: list[pulumi.Resource] = [rendered.containers[name] for name in service.depends_on]
    depends_on += [
        rendered.volumes[m.volume] for m in service.volumes if m.volume in rendered.volumes
    ]
    return docker.Container(
        service.name,
        name=service.name,
        image=image_ref,
        command=list(service.command) if service.command is not None else None,
        envs=rendered.envs[service.name],
        networks_advanced=[
            docker.ContainerNetworksAdvancedArgs(
                name=rendered.network_names[attachment.network], aliases=list(attachment.aliases)
            )
            for attachment in service.networks
        ],
        volumes=[
            docker.ContainerVolumeArgs(
                volume_name=(
                    rendered.volumes[mount.volume].name
                    if mount.volume in rendered.volumes
                    else mount.volume
                ),
                container_path=mount.target,
                read_only=mount.read_only,
            )
            for mount in service.volumes
        ],
        ports=[
            docker.ContainerPortArgs(
                internal=port.container_port,
                external=port.host_port,
                ip=port.host_ip,
                protocol=port.protocol,
            )
            for port in service.ports
        ],
        healthcheck=_healthcheck(service.healthcheck) if service.healthcheck else None,
        restart=service.restart,
        user=service.user,
        memory=service.limits.memory_mb,
        cpus=str(service.limits.cpus) if service.limits.cpus is not None else None,
        labels=_labels(service.labels, docker.ContainerLabelArgs),
        must_run=True,
        wait=service.healthcheck is not None,
        wait_timeout=WAIT_TIMEOUT_S,
        opts=pulumi.ResourceOptions(depends_on=depends_on),
    )


def _healthcheck(check: Healthcheck) -> docker.ContainerHealthcheckArgs:
    return docker.ContainerHealthcheckArgs(
        tests=list(check.test),
        interval=f"{check.interval_s}s",
        timeout=f"{check.timeout_s}s",
        retries=check.retries,
        start_period=f"{check.start_period_s}s",
    )


def _labels(labels: Mapping[str, str], args_type: type[_LabelArgs]) -> list[_LabelArgs]:
    return [args_type(label=key, value=value) for key, value in labels.items()]


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
    spec = build_stack(stack_config)
    secrets = {secret.name: config.require_secret(secret.setting) for secret in spec.secrets}
    rendered = render(spec, secrets)
    api_port = next(
        p for p in spec.service(stack_config.api_name).ports if p.container_port == API_PORT
    )
    outputs: dict[str, pulumi.Input[object]] = {
        "apiUrl": f"http://{api_port.host_ip}:{api_port.host_port}",
        "networkName": rendered.network_names[stack_config.network_name],
        "volumeNames": [volume.name for volume in rendered.volumes.values()],
        "mode": stack_config.mode,
    }
    return Program(spec, rendered, outputs)


def main() -> None:
    """The Pulumi program: config -> spec -> resources -> stack outputs."""
    program = declare(pulumi.Config())
    for name, value in program.outputs.items():
        pulumi.export(name, value)
