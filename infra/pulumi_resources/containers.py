"""The container rendering of a spec (target ``containers``): one ``docker.Container`` a service.

Besides the network, the volumes and the images (:mod:`infra.pulumi_resources.shared`):

* one ``docker.Container`` per service, waiting for its healthcheck (``wait=True``), hardened
  as the spec says (capabilities, no-new-privileges, read-only root, tmpfs);
* the two managed servers are ``retain_on_delete`` (``retained``): ``pulumi destroy`` or a
  switch to external mode leaves them running (the switch thereby hands them over, and
  external mode finds them by name). A retained server that must be *replaced* (its image
  rebuilt, a rotated server password) keeps running under its fixed name, so the provider's
  delete-before-replace would collide with it: ``invoke up`` removes such a server first (its
  data stays in its volume); by hand, ``docker rm -f`` it before ``pulumi up``. Containers run
  the built image by its id (``repo_digest``), and every read-back input is spelled as the
  provider reads it back (:func:`~infra.pulumi_resources.spelling.canonical_cpus`,
  :func:`~infra.pulumi_resources.spelling.go_duration`), so an unchanged stack diffs to nothing;
* every container carries the stack's owner label (``pulumi:<project>/<stack>``), so the
  ``invoke`` tasks of another checkout or stack refuse to touch it;
* its secret files as ``uploads`` (content from secret config, owner and mode from the spec).
  The Engine API refuses any upload into a container whose root filesystem is read-only
  ("container rootfs is marked read-only", even for a path inside a volume), so a read-only
  service gets its files through a ``<name>-secrets`` volume, filled by uploads into a
  ``<name>-secrets`` container that is created and never started, and mounted read-only
  at ``/run/secrets``.

Nothing secret is ever an env var or an argument: ``docker inspect`` shows none.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pulumi
import pulumi_docker as docker

from app_patch.settings import PROJECT_ROOT
from infra.pulumi_resources import shared
from infra.pulumi_resources.spelling import canonical_cpus, go_duration
from infra.spec import SECRETS_DIR, Healthcheck, Service, Stack

WAIT_TIMEOUT_S = 180
SECRETS_REVISION_LABEL = "io.media-analysis-kit.secrets-revision"


def render(
    spec: Stack,
    secrets: Mapping[str, pulumi.Output[str]],
    root: Path = PROJECT_ROOT,
    retained: frozenset[str] = frozenset(),
) -> shared.Rendered:
    """Register the resources for ``spec``; ``secrets`` maps secret names to outputs; the
    containers named in ``retained`` (the managed servers) are left running by a delete."""
    rendered = shared.Rendered()
    shared.networks_and_volumes(spec, rendered)
    for service in spec.ordered_services():
        rendered.images[service.name] = shared.image_for(
            spec, service, rendered, root, same_build=True
        )
        uploads = _uploads(service, secrets)
        if uploads and service.hardening.read_only:
            _secret_loader(service, uploads, rendered)
            uploads = []
        container = _container(service, rendered, uploads, service.name in retained)
        rendered.containers[service.name] = container
    return rendered


def _uploads(
    service: Service, secrets: Mapping[str, pulumi.Output[str]]
) -> list[docker.ContainerUploadArgs]:
    """One upload per secret file: content resolved from secret outputs (so it stays a
    secret in state and previews), owner and mode as the spec says."""
    uploads = []
    for secret_file in service.secret_files:
        names = secret_file.content.secret_names()

        def resolve(
            values: list[str], template: Any = secret_file.content, names: Any = names
        ) -> str:
            return str(template.resolve(dict(zip(names, values, strict=True))))

        content: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.all(*(secrets[name] for name in names)).apply(resolve)
        )
        uploads.append(
            docker.ContainerUploadArgs(
                file=secret_file.target,
                content=content,
                owner=str(secret_file.uid),
                group=str(secret_file.gid),
                permissions=f"{secret_file.mode:04o}",
            )
        )
    return uploads


def _secret_loader(
    service: Service, uploads: list[docker.ContainerUploadArgs], rendered: shared.Rendered
) -> None:
    """The ``<name>-secrets`` volume and the never-started container that fills it."""
    name = f"{service.name}-secrets"
    volume = docker.Volume(
        name,
        name=name,
        labels=shared.labels(service.labels, docker.VolumeLabelArgs),
        opts=shared.volume_options(),
    )
    image = rendered.images[service.name]
    rendered.secret_volumes[service.name] = volume
    rendered.secret_loaders[service.name] = docker.Container(
        name,
        name=name,
        # Never started: the tag is enough, and a rebuild then replaces only the service.
        image=image.image_name if isinstance(image, docker.Image) else image.image_id,
        command=["true"],
        start=False,
        must_run=False,
        network_mode="none",
        volumes=[docker.ContainerVolumeArgs(volume_name=volume.name, container_path=SECRETS_DIR)],
        uploads=uploads,
        labels=shared.labels(service.labels, docker.ContainerLabelArgs),
        opts=pulumi.ResourceOptions(depends_on=[volume]),
    )


def _container(
    service: Service,
    rendered: shared.Rendered,
    uploads: list[docker.ContainerUploadArgs],
    retain: bool = False,
) -> docker.Container:
    depends_on: list[pulumi.Resource] = [rendered.containers[name] for name in service.depends_on]
    depends_on += shared.volume_dependencies(service, rendered)
    volumes = [
        docker.ContainerVolumeArgs(
            volume_name=shared.volume_name(rendered, mount.volume),
            container_path=mount.target,
            read_only=mount.read_only,
        )
        for mount in service.volumes
    ]
    loader = rendered.secret_loaders.get(service.name)
    label_args: list[Any] = shared.labels(dict(service.labels), docker.ContainerLabelArgs)
    if loader is not None:
        secret_volume = rendered.secret_volumes[service.name]
        volumes.append(
            docker.ContainerVolumeArgs(
                volume_name=secret_volume.name, container_path=SECRETS_DIR, read_only=True
            )
        )
        # New files (a rotated password) replace the loader; this label then replaces the
        # service too, which reads its files only at start.
        label_args.append(docker.ContainerLabelArgs(label=SECRETS_REVISION_LABEL, value=loader.id))
        depends_on.append(loader)
    hardening = service.hardening
    return docker.Container(
        service.name,
        name=service.name,
        image=shared.image_id(rendered.images[service.name]),
        command=list(service.command) if service.command is not None else None,
        envs=[f"{key}={value}" for key, value in service.env.items()],
        uploads=uploads or None,
        networks_advanced=shared.attachments(
            service, rendered, docker.ContainerNetworksAdvancedArgs
        ),
        volumes=volumes,
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
        cpus=canonical_cpus(service.limits.cpus) if service.limits.cpus is not None else None,
        capabilities=docker.ContainerCapabilitiesArgs(
            drops=list(hardening.cap_drop), adds=list(hardening.cap_add) or None
        ),
        security_opts=list(hardening.security_opt) or None,
        read_only=hardening.read_only,
        tmpfs=dict(hardening.tmpfs) or None,
        labels=label_args,
        must_run=True,
        wait=service.healthcheck is not None,
        wait_timeout=WAIT_TIMEOUT_S,
        opts=pulumi.ResourceOptions(depends_on=depends_on, retain_on_delete=retain or None),
    )


def _healthcheck(check: Healthcheck) -> docker.ContainerHealthcheckArgs:
    return docker.ContainerHealthcheckArgs(
        tests=list(check.test),
        interval=go_duration(check.interval_s),
        timeout=go_duration(check.timeout_s),
        retries=check.retries,
        start_period=go_duration(check.start_period_s),
    )
