"""The stack file and its secrets: what ``docker stack deploy`` gets (images by id, an adopted
network), the versioned swarm secrets, and the removal of superseded ones."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import closing
from dataclasses import replace
from pathlib import Path

from docker.errors import APIError, NotFound

from infra import compose, docker_host, secrets_file
from infra.engines import record
from infra.engines.swarm.cluster import docker_cli
from infra.progress import Progress
from infra.spec import Stack

NAMESPACE_LABEL = "com.docker.stack.namespace"


def stack_path() -> Path:
    """The rendered stack file, beside the stack's record (like compose's)."""
    return record.state_dir() / "swarm-stack.yml"


def by_image_id(spec: Stack) -> Stack:
    """Every service whose image exists locally runs it by id (see the package docstring)."""
    ids: dict[str, str] = {}
    with closing(docker_host.client()) as engine:
        for service in spec.services:
            try:
                ids[service.name] = str(engine.images.get(service.image).id)
            except NotFound:
                continue
    return replace(
        spec,
        services=tuple(replace(s, image=ids.get(s.name, s.image)) for s in spec.services),
    )


def adopt_network(spec: Stack) -> Stack:
    """An existing overlay of the network's name that this stack did not create is used as
    ``external`` (never removed by ``down``)."""
    with closing(docker_host.client()) as engine:
        networks = []
        for network in spec.networks:
            found = [
                n for n in engine.networks.list(names=[network.name]) if n.name == network.name
            ]
            ours = (
                found and (found[0].attrs.get("Labels") or {}).get(NAMESPACE_LABEL) == spec.project
            )
            networks.append(replace(network, external=True) if found and not ours else network)
    return replace(spec, networks=tuple(networks))


def deploy_stack(
    spec: Stack, values: Mapping[str, str], progress: Progress, secrets_root: Path | None = None
) -> dict[str, str]:
    """Write the secret files, render the stack file and ``docker stack deploy`` it."""
    secrets_file.write_secret_files(spec, values, secrets_root)
    names = compose.swarm_secret_names(spec, values)
    path = stack_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    document = compose.render(spec, path.parent, secrets_root, swarm_secrets=names)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(compose.dump(document), encoding="utf-8")
    temporary.replace(path)
    args = ["stack", "deploy", "--prune", "--resolve-image", "never", "-c", str(path), spec.project]
    docker_cli(args, progress)
    return names


def prune_secrets(spec: Stack, keep: set[str]) -> list[str]:
    """Remove this stack's swarm secrets that are not ``keep`` (superseded versions); one
    still in use by a task that is going away is left for the next ``up``."""
    removed = []
    with closing(docker_host.client()) as engine:
        for secret in engine.secrets.list(filters={"label": f"{NAMESPACE_LABEL}={spec.project}"}):
            if secret.name in keep:
                continue
            try:
                secret.remove()
                removed.append(str(secret.name))
            except APIError:
                continue
    return removed
