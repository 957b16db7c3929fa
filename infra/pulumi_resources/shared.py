"""What both Pulumi renderings share: the record of what was registered, the network and the
volumes (with their data-safety options), the images, labels and network attachments.

Data safety (README "Pulumi: data safety"): the managed network and every volume are
``retain_on_delete``: ``pulumi destroy`` or a switch to external mode leaves them in Docker
(external mode finds them by name). They also ignore the inputs the provider would replace them
for (:data:`VOLUME_IGNORE_CHANGES`, :data:`NETWORK_IGNORE_CHANGES`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pulumi
import pulumi.dynamic
import pulumi_docker as docker

from infra.spec import Service, Stack

NETWORK_IGNORE_CHANGES = ["driver", "labels"]
"""The network inputs we set that the provider marks ForceNew besides ``name`` (which is also
the resource name, so a rename is a new resource, never a replacement)."""
VOLUME_IGNORE_CHANGES = ["driver", "driverOpts", "labels"]
"""Every ForceNew input of ``docker_volume`` except ``name`` (and ``cluster``, unused)."""
_LabelArgs = TypeVar(
    "_LabelArgs",
    docker.NetworkLabelArgs,
    docker.VolumeLabelArgs,
    docker.ContainerLabelArgs,
    docker.SecretLabelArgs,
    docker.ServiceLabelArgs,
    docker.ServiceTaskSpecContainerSpecLabelArgs,
)
_AttachmentArgs = TypeVar(
    "_AttachmentArgs",
    docker.ContainerNetworksAdvancedArgs,
    docker.ServiceTaskSpecNetworksAdvancedArgs,
)


@dataclass
class Rendered:
    """The resources registered for a spec, by spec name (for outputs and tests)."""

    network_names: dict[str, pulumi.Output[str]] = field(default_factory=dict)
    networks: dict[str, docker.Network] = field(default_factory=dict)
    volumes: dict[str, docker.Volume] = field(default_factory=dict)
    images: dict[str, docker.Image | docker.RemoteImage] = field(default_factory=dict)
    containers: dict[str, docker.Container] = field(default_factory=dict)
    secret_volumes: dict[str, docker.Volume] = field(default_factory=dict)
    secret_loaders: dict[str, docker.Container] = field(default_factory=dict)
    pids_limits: dict[str, pulumi.dynamic.Resource] = field(default_factory=dict)
    """Each a :class:`infra.pulumi_program.PidsLimit` (the program adds them after rendering)."""
    services: dict[str, docker.Service] = field(default_factory=dict)
    swarm_secrets: dict[str, docker.Secret] = field(default_factory=dict)


def networks_and_volumes(spec: Stack, rendered: Rendered) -> None:
    """The managed networks (an external one is only looked up) and the managed volumes."""
    for network in spec.networks:
        if network.external:
            found = docker.get_network_output(name=network.name)
            rendered.network_names[network.name] = found.name
            continue
        resource = docker.Network(
            network.name,
            name=network.name,
            driver=network.driver,
            attachable=network.attachable or None,
            labels=labels(network.labels, docker.NetworkLabelArgs),
            opts=network_options(),
        )
        rendered.networks[network.name] = resource
        rendered.network_names[network.name] = resource.name
    for volume in spec.volumes:
        if volume.external:
            continue
        rendered.volumes[volume.name] = docker.Volume(
            volume.name,
            name=volume.name,
            labels=labels(volume.labels, docker.VolumeLabelArgs),
            opts=volume_options(),
        )


def network_options() -> pulumi.ResourceOptions:
    """The managed network: shared with external-mode stacks, so never deleted by Pulumi, and
    never replaced (a replacement would create a second network of the same name first)."""
    return pulumi.ResourceOptions(retain_on_delete=True, ignore_changes=NETWORK_IGNORE_CHANGES)


def volume_options() -> pulumi.ResourceOptions:
    """Every volume: ``pulumi destroy`` leaves it (``docker volume rm`` deletes it on purpose),
    and no input change can replace it: a create-before-delete replacement of a fixed name
    would get the existing volume back from Docker and then delete it."""
    return pulumi.ResourceOptions(retain_on_delete=True, ignore_changes=VOLUME_IGNORE_CHANGES)


def image_for(
    spec: Stack, service: Service, rendered: Rendered, root: Path, *, same_build: bool
) -> docker.Image | docker.RemoteImage:
    """The image of ``service``: replicas of one service share it (one build, one resource),
    by image name (and build, when ``same_build``)."""
    shared = next(
        (rendered.images[other.name] for other in spec.services
         if other.name in rendered.images and other.image == service.image
         and (not same_build or other.build == service.build)),
        None,
    )  # fmt: skip
    return shared or _image(service, root)


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


def image_id(image: docker.Image | docker.RemoteImage) -> pulumi.Output[str]:
    """The image id, never the tag: the provider's docs say imageName "will not cause any
    updates when passed to dependencies"; repoDigest is the local image id when not pushed."""
    return image.repo_digest if isinstance(image, docker.Image) else image.image_id


def volume_name(rendered: Rendered, name: str) -> pulumi.Input[str]:
    """A mount's source: the managed volume's name output, else the external volume's name."""
    return rendered.volumes[name].name if name in rendered.volumes else name


def volume_dependencies(service: Service, rendered: Rendered) -> list[pulumi.Resource]:
    """The managed volumes ``service`` mounts."""
    return [rendered.volumes[m.volume] for m in service.volumes if m.volume in rendered.volumes]


def attachments(
    service: Service, rendered: Rendered, args_type: type[_AttachmentArgs]
) -> list[_AttachmentArgs]:
    """The service's networks with its aliases on each."""
    return [
        args_type(name=rendered.network_names[a.network], aliases=list(a.aliases))
        for a in service.networks
    ]


def labels(labels: Mapping[str, str], args_type: type[_LabelArgs]) -> list[_LabelArgs]:
    return [args_type(label=key, value=value) for key, value in labels.items()]
