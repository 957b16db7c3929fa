"""Render a :class:`~infra.spec.Stack` as ``pulumi_docker`` resources, and the stack program.

``main()`` is what ``pulumi up`` runs (via ``infra/__main__.py``): it reads the stack config
(passwords with ``require_secret``, so they stay encrypted in state and outputs), builds the
spec with :func:`infra.stack.build_stack` and registers:

* the network (``docker.Network``), or in external mode only a lookup (``get_network``);
* the volumes (``docker.Volume``);
* one image per service (``docker.Image`` built locally without push, or ``docker.RemoteImage``);
* one ``docker.Container`` per service, waiting for its healthcheck (``wait=True``), hardened
  as the spec says (capabilities, no-new-privileges, read-only root, tmpfs);
* data safety (README "Pulumi: data safety"): the managed network, every volume and the two
  managed servers are ``retain_on_delete``: ``pulumi destroy`` or a switch to external mode
  leaves them in Docker (the switch thereby hands the running servers over, and external mode
  finds them by name). Network and volumes also ignore the inputs the provider would replace
  them for (:data:`VOLUME_IGNORE_CHANGES`, :data:`NETWORK_IGNORE_CHANGES`). A retained server
  that must be *replaced* (its image rebuilt, a rotated server password) keeps running under
  its fixed name, so the provider's delete-before-replace would collide with it: ``invoke up``
  removes such a server first (its data stays in its volume); by hand, ``docker rm -f`` it
  before ``pulumi up``. Containers run the built image by its id (``repo_digest``), and every
  read-back input is spelled as the provider reads it back (:func:`canonical_cpus`,
  :func:`go_duration`), so an unchanged stack diffs to nothing;
* every container carries the stack's owner label (``pulumi:<project>/<stack>``), so the
  ``invoke`` tasks of another checkout or stack refuse to touch it;
* its secret files as ``uploads`` (content from secret config, owner and mode from the spec).
  The Engine API refuses any upload into a container whose root filesystem is read-only
  ("container rootfs is marked read-only", even for a path inside a volume), so a read-only
  service gets its files through a ``<name>-secrets`` volume, filled by uploads into a
  ``<name>-secrets`` container that is created and never started, and mounted read-only
  at ``/run/secrets``;
* the pids limit as a :class:`PidsLimit` (the provider's Container has no such input: it is
  applied through the Engine API's container update right after creation).

Nothing secret is ever an env var or an argument: ``docker inspect`` shows none.

With ``target: swarm`` the same spec becomes swarm resources instead (:func:`render_swarm`):
an attachable overlay ``docker.Network`` (or the existing one), the volumes, one
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
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

import pulumi
import pulumi.dynamic
import pulumi_docker as docker

from app_patch.settings import PROJECT_ROOT
from infra.compose import secret_key, swarm_secret_name, tmpfs_size
from infra.config import ConfigError, config_from_source, pulumi_key
from infra.spec import SECRETS_DIR, Healthcheck, SecretFile, Service, Stack
from infra.stack import API_PORT, build_stack

WAIT_TIMEOUT_S = 180
SECRETS_REVISION_LABEL = "io.media-analysis-kit.secrets-revision"
NETWORK_IGNORE_CHANGES = ["driver", "labels"]
"""The network inputs we set that the provider marks ForceNew besides ``name`` (which is also
the resource name, so a rename is a new resource, never a replacement)."""
VOLUME_IGNORE_CHANGES = ["driver", "driverOpts", "labels"]
"""Every ForceNew input of ``docker_volume`` except ``name`` (and ``cluster``, unused)."""
NANO = Decimal(10) ** 9
_LabelArgs = TypeVar(
    "_LabelArgs",
    docker.NetworkLabelArgs,
    docker.VolumeLabelArgs,
    docker.ContainerLabelArgs,
    docker.SecretLabelArgs,
    docker.ServiceLabelArgs,
    docker.ServiceTaskSpecContainerSpecLabelArgs,
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
    pids_limits: dict[str, PidsLimit] = field(default_factory=dict)
    services: dict[str, docker.Service] = field(default_factory=dict)
    swarm_secrets: dict[str, docker.Secret] = field(default_factory=dict)


def render(
    spec: Stack,
    secrets: Mapping[str, pulumi.Output[str]],
    root: Path = PROJECT_ROOT,
    retained: frozenset[str] = frozenset(),
) -> Rendered:
    """Register the resources for ``spec``; ``secrets`` maps secret names to outputs; the
    containers named in ``retained`` (the managed servers) are left running by a delete."""
    rendered = Rendered()
    _networks_and_volumes(spec, rendered)
    for service in spec.ordered_services():
        # Replicas of one service share its image: one build, one resource.
        shared = next(
            (rendered.images[other.name] for other in spec.services
             if other.name in rendered.images and other.image == service.image
             and other.build == service.build),
            None,
        )  # fmt: skip
        rendered.images[service.name] = shared or _image(service, root)
        uploads = _uploads(service, secrets)
        if uploads and service.hardening.read_only:
            _secret_loader(service, uploads, rendered)
            uploads = []
        container = _container(service, rendered, uploads, service.name in retained)
        rendered.containers[service.name] = container
        if service.limits.pids is not None:
            rendered.pids_limits[service.name] = PidsLimit(
                f"{service.name}-pids",
                container_id=container.id,
                pids_limit=service.limits.pids,
                opts=pulumi.ResourceOptions(depends_on=[container]),
            )
    return rendered


def _networks_and_volumes(spec: Stack, rendered: Rendered) -> None:
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
            labels=_labels(network.labels, docker.NetworkLabelArgs),
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
            labels=_labels(volume.labels, docker.VolumeLabelArgs),
            opts=volume_options(),
        )


def render_swarm(
    spec: Stack, secrets: Mapping[str, pulumi.Output[str]], root: Path = PROJECT_ROOT
) -> Rendered:
    """Register the swarm resources for ``spec`` (target ``swarm``): see the module docstring."""
    rendered = Rendered()
    _networks_and_volumes(spec, rendered)
    for service in spec.services:
        shared = next(
            (rendered.images[other.name] for other in spec.services
             if other.name in rendered.images and other.image == service.image),
            None,
        )  # fmt: skip
        rendered.images[service.name] = shared or _image(service, root)
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
        labels=_labels(service.labels, docker.SecretLabelArgs),
    )


def _base64(content: pulumi.Output[str]) -> pulumi.Output[str]:
    """A docker_secret's ``data`` is base64."""
    return content.apply(lambda text: base64.b64encode(text.encode()).decode())


def _service(
    service: Service,
    rendered: Rendered,
    secrets: list[docker.ServiceTaskSpecContainerSpecSecretArgs],
) -> docker.Service:
    image = rendered.images[service.name]
    image_ref = image.repo_digest if isinstance(image, docker.Image) else image.image_id
    hardening, deploy = service.hardening, service.deploy
    mounts = [
        docker.ServiceTaskSpecContainerSpecMountArgs(
            target=mount.target,
            type="volume",
            source=(
                rendered.volumes[mount.volume].name
                if mount.volume in rendered.volumes
                else mount.volume
            ),
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
    depends_on: list[pulumi.Resource] = [
        rendered.volumes[m.volume] for m in service.volumes if m.volume in rendered.volumes
    ]
    check = service.healthcheck
    return docker.Service(
        service.name,
        name=service.name,
        task_spec=docker.ServiceTaskSpecArgs(
            container_spec=docker.ServiceTaskSpecContainerSpecArgs(
                image=image_ref,
                args=list(service.command) if service.command is not None else None,
                env=dict(service.env),
                user=service.user,
                labels=_labels(service.labels, docker.ServiceTaskSpecContainerSpecLabelArgs),
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
            networks_advanceds=[
                docker.ServiceTaskSpecNetworksAdvancedArgs(
                    name=rendered.network_names[a.network], aliases=list(a.aliases)
                )
                for a in service.networks
            ],
            placement=docker.ServiceTaskSpecPlacementArgs(constraints=list(deploy.constraints))
            if deploy.constraints
            else None,
            resources=docker.ServiceTaskSpecResourcesArgs(limits=limits),
            restart_policy=docker.ServiceTaskSpecRestartPolicyArgs(condition="any", delay="2s"),
        ),
        mode=docker.ServiceModeArgs(
            replicated=docker.ServiceModeReplicatedArgs(replicas=deploy.replicas)
        ),
        update_config=docker.ServiceUpdateConfigArgs(
            parallelism=1,
            delay="0s",
            order=deploy.order,
            failure_action="rollback",
            monitor=f"{deploy.monitor_s}s",
            max_failure_ratio="0",
        ),
        rollback_config=docker.ServiceRollbackConfigArgs(
            parallelism=1,
            delay="0s",
            order=deploy.order,
            failure_action="pause",
            monitor=f"{deploy.monitor_s}s",
            max_failure_ratio="0",
        ),
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
        labels=_labels(service.labels, docker.ServiceLabelArgs),
        opts=pulumi.ResourceOptions(depends_on=depends_on),
    )


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
    service: Service, uploads: list[docker.ContainerUploadArgs], rendered: Rendered
) -> None:
    """The ``<name>-secrets`` volume and the never-started container that fills it."""
    name = f"{service.name}-secrets"
    volume = docker.Volume(
        name,
        name=name,
        labels=_labels(service.labels, docker.VolumeLabelArgs),
        opts=volume_options(),
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
        labels=_labels(service.labels, docker.ContainerLabelArgs),
        opts=pulumi.ResourceOptions(depends_on=[volume]),
    )


def _container(
    service: Service,
    rendered: Rendered,
    uploads: list[docker.ContainerUploadArgs],
    retain: bool = False,
) -> docker.Container:
    image = rendered.images[service.name]
    # The image id, never the tag: the provider's docs say imageName "will not cause any updates
    # when passed to dependencies"; repoDigest is the local image id when not pushed.
    image_ref = image.repo_digest if isinstance(image, docker.Image) else image.image_id
    depends_on: list[pulumi.Resource] = [rendered.containers[name] for name in service.depends_on]
    depends_on += [
        rendered.volumes[m.volume] for m in service.volumes if m.volume in rendered.volumes
    ]
    volumes = [
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
    ]
    labels = dict(service.labels)
    loader = rendered.secret_loaders.get(service.name)
    label_args: list[Any] = _labels(labels, docker.ContainerLabelArgs)
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
        image=image_ref,
        command=list(service.command) if service.command is not None else None,
        envs=[f"{key}={value}" for key, value in service.env.items()],
        uploads=uploads or None,
        networks_advanced=[
            docker.ContainerNetworksAdvancedArgs(
                name=rendered.network_names[attachment.network], aliases=list(attachment.aliases)
            )
            for attachment in service.networks
        ],
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


def network_options() -> pulumi.ResourceOptions:
    """The managed network: shared with external-mode stacks, so never deleted by Pulumi, and
    never replaced (a replacement would create a second network of the same name first)."""
    return pulumi.ResourceOptions(retain_on_delete=True, ignore_changes=NETWORK_IGNORE_CHANGES)


def volume_options() -> pulumi.ResourceOptions:
    """Every volume: ``pulumi destroy`` leaves it (``docker volume rm`` deletes it on purpose),
    and no input change can replace it: a create-before-delete replacement of a fixed name
    would get the existing volume back from Docker and then delete it."""
    return pulumi.ResourceOptions(retain_on_delete=True, ignore_changes=VOLUME_IGNORE_CHANGES)


def provider_cpus_spelling(nano_cpus: int) -> str:
    """How the provider reads ``HostConfig.NanoCPUs`` back into ``cpus``: a port of
    ``nanoInt64ToDecimalString`` (terraform-provider-docker v4.5.0,
    internal/provider/helpers.go:133-149, called from resource_docker_container_funcs.go:947):
    ``big.Rat(n, 1e9).FloatString(9)``; if that string holds exactly nine "0" characters it
    returns ``FloatString(1)`` (rounded half away from zero), else the string with its trailing
    zeros trimmed (so 10 CPUs read back as "10.")."""
    if nano_cpus == 0:
        return "0"
    value = Decimal(nano_cpus) / NANO
    nine = f"{value.quantize(Decimal('1e-9'), rounding=ROUND_HALF_UP):f}"
    if nine.count("0") == 9:
        return f"{value.quantize(Decimal('0.1'), rounding=ROUND_HALF_UP):f}"
    return nine.rstrip("0")


def canonical_cpus(cpus: float | str | Decimal) -> str:
    """``cpus`` spelled exactly as the provider reads it back, so that an unchanged value never
    diffs (``cpus`` is ForceNew: any difference replaces the container on every ``up``).

    ``ValueError`` for a value the provider cannot keep: finer than a nano-CPU (docker's
    ``opts.ParseCPUs``: "value is too precise") or one whose read-back spelling is another
    number (0.05 reads back as "0.1", 10.05 as "10.1"), which no spelling could stop from
    replacing the container on every ``up``."""
    try:
        value = Decimal(str(cpus))
    except InvalidOperation:
        raise ValueError(f"cpus must be a number, not {cpus!r}") from None
    nano = value * NANO
    if not value.is_finite() or value <= 0 or nano != nano.to_integral_value():
        raise ValueError(f"cpus must be a positive multiple of 1e-9, not {cpus}")
    spelling = provider_cpus_spelling(int(nano))
    if Decimal(spelling) != value:
        raise ValueError(
            f"cpus {cpus} would be read back by the docker provider as {spelling} and replace "
            "the container on every up; choose a nearby value that keeps its spelling"
        )
    return spelling


def go_duration(seconds: int) -> str:
    """Whole seconds as Go's ``time.Duration.String()`` spells them, which is how the provider
    reads a healthcheck's durations back (resource_docker_container_funcs.go:964-967):
    5 -> "5s", 60 -> "1m0s", 3600 -> "1h0m0s"."""
    if seconds < 0:
        raise ValueError(f"a duration must not be negative, not {seconds}")
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _labels(labels: Mapping[str, str], args_type: type[_LabelArgs]) -> list[_LabelArgs]:
    return [args_type(label=key, value=value) for key, value in labels.items()]


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
