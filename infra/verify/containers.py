"""The checks of a stack on one Docker engine (``invoke verify`` on compose or Pulumi)."""

from __future__ import annotations

from functools import partial

from infra import docker_host
from infra.config import StackConfig
from infra.stack import POSTGRES_PORT, api_replica_names, build_stack
from infra.verify.boundary import api_checks, redis_auth_check, redis_user_checks, storage_check
from infra.verify.exposure import no_secret_exposed
from infra.verify.hardening import hardened
from infra.verify.network import (
    api_behind_proxy,
    healthy,
    on_network,
    postgres_not_published,
    proxy_sees_replicas,
)
from infra.verify.results import Check, CheckResult, run_check
from infra.verify.servers import database_role, prometheus_rules, prometheus_targets


def run_checks(config: StackConfig) -> list[CheckResult]:
    """All checks for the stack described by ``config`` (the callers pass
    :func:`infra.engines.record.config_or_env`: what ``up`` recorded, else the ``MA_INFRA_*``
    environment).

    Hardening and secret exposure are checked for every container this stack declares (in
    external mode the shared servers are someone else's: only their health and network)."""
    spec = build_stack(config)
    ours = {service.name: service for service in spec.services}
    names = (
        config.postgres_host,
        config.redis_host,
        *api_replica_names(config),
        config.proxy_name,
    )
    checks: list[Check] = []
    for name in names:
        checks.append((f"{name} running and healthy", partial(healthy, name)))
        checks.append(
            (
                f"{name} on {config.network_name} as {name}",
                partial(on_network, name, config.network_name),
            )
        )
    for name in names:
        if name in ours:
            checks.append(
                (
                    f"{name}: no password in Config.Env or Args",
                    partial(no_secret_exposed, name, names),
                )
            )
            checks.append((f"{name} hardened", partial(hardened, ours[name])))
    postgres_address = partial(docker_host.container_ip, config.postgres_host, config.network_name)
    checks += [
        *api_checks(
            config,
            lambda: config.api_name,
            lambda: database_role(config.api_name, postgres_address, f" in {config.api_name}"),
        ),
        (
            f"{config.postgres_host} port {POSTGRES_PORT} not published on the host",
            lambda: postgres_not_published(config),
        ),
        (
            f"the API replicas are reached only through {config.proxy_name}",
            lambda: api_behind_proxy(config),
        ),
        (
            f"{config.proxy_name} routes to every API replica (all UP)",
            lambda: proxy_sees_replicas(config),
        ),
        redis_auth_check(config, lambda: config),
        storage_check(lambda: config.api_name),
    ]
    if config.monitoring:
        checks += [
            (
                f"{config.prometheus_name} scrapes every API replica (targets up)",
                lambda: prometheus_targets(config),
            ),
            (
                f"{config.prometheus_name} loaded the alert rules",
                lambda: prometheus_rules(config),
            ),
        ]
    if config.redis_host in ours:
        checks += redis_user_checks(config, lambda: config)
    return [run_check(name, check) for name, check in checks]
