"""The swarm rendering of a spec (target ``swarm``): swarm secrets and one ``docker.Service`` a
service.

An attachable overlay ``docker.Network`` (or the existing one), the volumes, one
``docker.Secret`` per secret file, named after a hash of its content (swarm secrets are
immutable: a new value is a new secret, created before the old one is deleted, and the
services that mount it roll), and one ``docker.Service`` per service with the spec's
:class:`~infra.spec.Deploy` (replicas, placement, rolling update with rollback), limits,
capabilities, read-only root and tmpfs mounts. What pulumi-docker 5.2's ``Service`` cannot
express: the pids limit (no input; the stack file has it) and no-new-privileges (swarm has
none on Docker 20.10).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import pulumi
import pulumi_docker as docker

from app_patch.settings import PROJECT_ROOT
from infra.compose import secret_key, swarm_secret_name, tmpfs_size
from infra.pulumi_resources import shared
from infra.spec import Deploy, SecretFile, Service, Stack

_RolloutArgs = TypeVar(
    "_RolloutArgs", docker.ServiceUpdateConfigArgs, docker.ServiceRollbackConfigArgs
)


def render_swarm(
    spec: Stack, secrets: Mapping[str, pulumi.Output[str]], root: Path = PROJECT_ROOT
) -> shared.Rendered:
    """Register the swarm resources for ``spec`` (target ``swarm``): see the module docstring."""
    rendered = shared.Rendered()
    shared.networks_and_volumes(spec, rendered)
    for service in spec.services:
        rendered.images[service.name] = shared.image_for(
            spec, service, rendered, root, same_build=False
        )
        refs = []
        for secret_file in service.secret_files:
            secret = _swarm_secret(service, secret_file, secrets, spec)
            rendered.swarm_secrets[secret_key(service.name, secret_file.name)] = secret
            refs.append(
                docker.ServiceTaskSpecContainerSpecSecretArgs(
                    secret_id=secret.id,
                    secret_name=secret.name,
                    file_name=secret_file.target,
                    file_uid=str(secret_file.uid),
                    file_gid=str(secret_file.gid),
                    file_mode=secret_file.mode,
                )
            )
        rendered.services[service.name] = _service(service, rendered, refs)
    return rendered


def _swarm_secret(
    service: Service,
    secret_file: SecretFile,
    secrets: Mapping[str, pulumi.Output[str]],
    spec: Stack,
) -> docker.Secret:
    names = secret_file.content.secret_names()
    content: pulumi.Output[str] = pulumi.Output.all(*(secrets[name] for name in names)).apply(
        lambda values: secret_file.content.resolve(dict(zip(names, values, strict=True)))
    )
    # The name carries a digest of the content, not the content: not a secret itself.
    name = pulumi.Output.unsecret(
        content.apply(lambda text: swarm_secret_name(service.name, secret_file.name, text))
    )
    return docker.Secret(
        secret_key(service.name, secret_file.name),
        name=name,
        data=pulumi.Output.secret(_base64(content)),  # type: ignore[arg-type]
        labels=shared.labels(service.labels, docker.SecretLabelArgs),
    )


def _base64(content: pulumi.Output[str]) -> pulumi.Output[str]:
    """A docker_secret's ``data`` is base64."""
    return content.apply(lambda text: base64.b64encode(text.encode()).decode())


def _service(
    service: Service,
    rendered: shared.Rendered,
    secrets: list[docker.ServiceTaskSpecContainerSpecSecretArgs],
) -> docker.Service:
    hardening, deploy = service.hardening, service.deploy
    mounts = [
        docker.ServiceTaskSpecContainerSpecMountArgs(
            target=mount.target,
            type="volume",
            source=shared.volume_name(rendered, mount.volume),
            read_only=mount.read_only,
        )
        for mount in service.volumes
    ] + [
        docker.ServiceTaskSpecContainerSpecMountArgs(
            target=path,
            type="tmpfs",
            tmpfs_options=docker.ServiceTaskSpecContainerSpecMountTmpfsOptionsArgs(
                size_bytes=tmpfs_size(options)
            ),
        )
        for path, options in hardening.tmpfs.items()
    ]
    limits = docker.ServiceTaskSpecResourcesLimitsArgs(
        memory_bytes=service.limits.memory_mb << 20 if service.limits.memory_mb else None,
        nano_cpus=int(service.limits.cpus * 1e9) if service.limits.cpus else None,
    )
    check = service.healthcheck
    return docker.Service(
        service.name,
        name=service.name,
        task_spec=docker.ServiceTaskSpecArgs(
            container_spec=docker.ServiceTaskSpecContainerSpecArgs(
                image=shared.image_id(rendered.images[service.name]),
                args=list(service.command) if service.command is not None else None,
                env=dict(service.env),
                user=service.user,
                labels=shared.labels(service.labels, docker.ServiceTaskSpecContainerSpecLabelArgs),
                read_only=hardening.read_only,
                cap_drops=list(hardening.cap_drop),
                cap_adds=list(hardening.cap_add) or None,
                healthcheck=docker.ServiceTaskSpecContainerSpecHealthcheckArgs(
                    tests=list(check.test),
                    interval=f"{check.interval_s}s",
                    timeout=f"{check.timeout_s}s",
                    retries=check.retries,
                    start_period=f"{check.start_period_s}s",
                )
                if check
                else None,
                secrets=secrets or None,
                mounts=mounts or None,
                stop_grace_period=f"{deploy.stop_grace_s}s",
            ),
            networks_advanceds=shared.attachments(
                service, rendered, docker.ServiceTaskSpecNetworksAdvancedArgs
            ),
            placement=docker.ServiceTaskSpecPlacementArgs(constraints=list(deploy.constraints))
            if deploy.constraints
            else None,
            resources=docker.ServiceTaskSpecResourcesArgs(limits=limits),
            restart_policy=docker.ServiceTaskSpecRestartPolicyArgs(condition="any", delay="2s"),
        ),
        mode=docker.ServiceModeArgs(
            replicated=docker.ServiceModeReplicatedArgs(replicas=deploy.replicas)
        ),
        update_config=_rollout(docker.ServiceUpdateConfigArgs, deploy, "rollback"),
        rollback_config=_rollout(docker.ServiceRollbackConfigArgs, deploy, "pause"),
        endpoint_spec=docker.ServiceEndpointSpecArgs(
            mode="dnsrr",
            ports=[
                docker.ServiceEndpointSpecPortArgs(
                    target_port=port.container_port,
                    published_port=port.host_port,
                    protocol=port.protocol,
                    publish_mode="host",
                )
                for port in service.ports
            ]
            or None,
        ),
        labels=shared.labels(service.labels, docker.ServiceLabelArgs),
        opts=pulumi.ResourceOptions(depends_on=shared.volume_dependencies(service, rendered)),
    )


def _rollout(args_type: type[_RolloutArgs], deploy: Deploy, failure_action: str) -> _RolloutArgs:
    """An update (or rollback) of one task at a time, in the spec's order, watched for
    ``monitor_s``; ``failure_action`` when a task fails."""
    return args_type(
        parallelism=1,
        delay="0s",
        order=deploy.order,
        failure_action=failure_action,
        monitor=f"{deploy.monitor_s}s",
        max_failure_ratio="0",
    )
