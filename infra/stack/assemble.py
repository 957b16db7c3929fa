"""The whole spec for a config: which network, volumes and services each mode declares."""

from __future__ import annotations

from dataclasses import replace

from infra.config import StackConfig, secrets_for
from infra.spec import Network, Stack, Volume
from infra.stack.layout import (
    EXTERNAL_PROJECT,
    LABELS,
    OWNER_LABEL,
    PG_VOLUME,
    PROJECT,
    PROMETHEUS_VOLUME,
    REDIS_VOLUME,
    STORAGE_VOLUME,
)
from infra.stack.services import (
    api_replicas,
    postgres_service,
    prometheus_service,
    proxy_service,
    redis_service,
)


def build_stack(config: StackConfig, owner: str | None = None) -> Stack:
    """The spec for ``config`` (validated first); with ``owner``, every container carries it
    in :data:`OWNER_LABEL`."""
    config.validate()
    managed = config.mode == "managed"
    swarm = config.target == "swarm"
    network = Network(
        config.network_name,
        driver="overlay" if swarm else "bridge",
        external=not managed,
        labels=LABELS if managed else {},
        attachable=swarm,
    )
    volumes = [Volume(STORAGE_VOLUME, labels=LABELS)]
    services = [*api_replicas(config), proxy_service(config)]
    if config.monitoring:
        volumes.append(Volume(PROMETHEUS_VOLUME, labels=LABELS))
        services.append(prometheus_service(config))
    if managed:
        volumes = [Volume(PG_VOLUME, labels=LABELS), Volume(REDIS_VOLUME, labels=LABELS), *volumes]
        services = [postgres_service(config), redis_service(config), *services]
    if owner:
        services = [replace(s, labels={**s.labels, OWNER_LABEL: owner}) for s in services]
    return Stack(
        project=PROJECT if managed else EXTERNAL_PROJECT,
        networks=(network,),
        volumes=tuple(volumes),
        services=tuple(services),
        secrets=secrets_for(config.mode),
        referenced_services=() if managed else (config.postgres_host, config.redis_host),
    )
