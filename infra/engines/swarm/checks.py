"""The checks of a swarm stack (``invoke verify`` on the swarm engine), on its services and on
their tasks' containers on this node."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from functools import partial
from typing import Any

from infra import proxy
from infra.config import StackConfig
from infra.engines.swarm.services import full_name, server_address, task_container, task_containers
from infra.spec import SECRETS_DIR, Service, Stack
from infra.verify.boundary import api_checks, redis_auth_check, redis_user_checks, storage_check
from infra.verify.exposure import (
    URL_WITH_PASSWORD,
    no_secret_exposed,
    secret_values,
    secret_variable,
)
from infra.verify.hardening import hardened
from infra.verify.hosts import inside, local
from infra.verify.results import Check, CheckFailed, CheckResult, run_check
from infra.verify.servers import database_role


def run_swarm_checks(config: StackConfig, spec: Stack) -> list[CheckResult]:
    """The checks of a swarm stack (``invoke verify`` on the swarm engine), on the services
    (``docker service inspect``) and on their tasks' containers on this node (the storage
    node, where the servers and the API run): every service's replicas running and healthy,
    the overlay, the secrets mounted as the spec says and in no service spec, nothing
    published but the API's port, the hardening swarm supports, the proxy routing to every
    API task, and the same trust-boundary checks as on one engine."""
    checks: list[Check] = []
    tasks: dict[str, str] = {}

    def task(name: str) -> str:
        if name not in tasks:
            tasks[name] = task_container(spec, name)
        return tasks[name]

    names = [service.name for service in spec.services]
    for service in spec.services:
        full = full_name(spec, service.name)
        checks += [
            (
                f"{full}: {service.deploy.replicas} replica(s) running and healthy",
                partial(_swarm_replicas, spec, service),
            ),
            (
                f"{full}: no password in the service spec",
                partial(_swarm_spec_clean, spec, service, task),
            ),
            (f"{full}: secrets mounted as files", partial(_swarm_secrets, spec, service, task)),
            (
                f"{full} hardened (as far as swarm allows)",
                partial(_swarm_hardened, service, task),
            ),
        ]
    checks += [
        (
            f"{config.network_name} is an attachable overlay with every service on it",
            lambda: _swarm_network(config, spec),
        ),
        (
            f"nothing published but the API port {config.api_host_port}",
            lambda: _swarm_published(config, spec),
        ),
        (
            f"{config.proxy_name} routes to every API task (tasks.{config.api_name}, all UP)",
            lambda: _swarm_proxy(config, spec, task),
        ),
        *api_checks(
            config,
            lambda: task(config.api_name),
            lambda: _swarm_database_role(config, spec, task),
        ),
        storage_check(lambda: task(config.api_name)),
    ]
    if config.redis_host in names:

        def redis() -> StackConfig:
            return dataclasses.replace(config, redis_host=task(config.redis_host))

        checks += [redis_auth_check(config, redis), *redis_user_checks(config, redis)]
    return [run_check(name, check) for name, check in checks]


def _swarm_hardened(service: Service, task: Callable[[str], str]) -> str:
    return hardened(service, task(service.name), swarm=True)


def _service_attrs(spec: Stack, name: str) -> dict[str, Any]:
    result = local().run("docker service inspect %s", full_name(spec, name))
    if result.rc != 0:
        raise CheckFailed(f"no swarm service {full_name(spec, name)}")
    attrs: dict[str, Any] = json.loads(result.stdout)[0]
    return attrs


def _swarm_replicas(spec: Stack, service: Service) -> str:
    full = full_name(spec, service.name)
    listing = local().run(
        "docker service ps --filter desired-state=running --format '{{.CurrentState}}' %s", full
    )
    states = [line.split()[0] for line in listing.stdout.splitlines() if line.strip()]
    running = states.count("Running")
    if running != service.deploy.replicas:
        raise CheckFailed(f"{running} of {service.deploy.replicas} running ({', '.join(states)})")
    containers = task_containers(spec, service.name)
    health = [str((c["State"].get("Health") or {}).get("Status", "none")) for c in containers]
    unhealthy = [h for h in health if h != "healthy"]
    if unhealthy or len(containers) != service.deploy.replicas:
        raise CheckFailed(f"task containers on this node: {', '.join(health) or 'none'}")
    return f"{running} running, healthy: {len(health)}"


def _swarm_spec_clean(spec: Stack, service: Service, task: Callable[[str], str]) -> str:
    """Nothing secret in ``docker service inspect`` (the values the tasks read from their
    files, and anything that looks like a password), nor in the task's ``docker inspect``."""
    text = json.dumps(_service_attrs(spec, service.name))
    values = secret_values(tuple(task(s.name) for s in spec.services))
    if any(value in text for value in values):
        raise CheckFailed("a secret value appears in the service spec")
    env = _service_attrs(spec, service.name)["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env")
    for item in env or []:
        key, _, value = str(item).partition("=")
        if secret_variable(key, value) or URL_WITH_PASSWORD.search(value):
            raise CheckFailed(f"env {key} carries a secret")
    in_task = no_secret_exposed(task(service.name), tuple(task(s.name) for s in spec.services))
    return f"service spec checked against {len(values)} secret values; task: {in_task}"


def _swarm_secrets(spec: Stack, service: Service, task: Callable[[str], str]) -> str:
    if not service.secret_files:
        return "none needed"
    mounted = _service_attrs(spec, service.name)["Spec"]["TaskTemplate"]["ContainerSpec"]
    refs = {r["File"]["Name"]: r for r in mounted.get("Secrets") or []}
    problems = []
    host = inside(task(service.name))
    for wanted in service.secret_files:
        ref = refs.get(wanted.name)
        if ref is None:
            problems.append(f"{wanted.name} not mounted")
            continue
        found = (ref["File"]["UID"], ref["File"]["GID"], ref["File"]["Mode"])
        if found != (str(wanted.uid), str(wanted.gid), wanted.mode):
            problems.append(f"{wanted.name} is {found}")
        stat = host.run(f"stat -c '%u %g %a' {wanted.target}")
        if stat.stdout.split() != [str(wanted.uid), str(wanted.gid), f"{wanted.mode:o}"]:
            problems.append(f"{wanted.target} is {stat.stdout.strip() or stat.stderr.strip()}")
    if problems:
        raise CheckFailed("; ".join(problems))
    names = ", ".join(sorted(r["SecretName"] for r in refs.values()))
    return f"{len(refs)} swarm secret(s) as files under {SECRETS_DIR}: {names}"


def _swarm_network(config: StackConfig, spec: Stack) -> str:
    result = local().run("docker network inspect %s", config.network_name)
    if result.rc != 0:
        raise CheckFailed(f"no network {config.network_name}")
    network = json.loads(result.stdout)[0]
    if network.get("Driver") != "overlay" or network.get("Scope") != "swarm":
        raise CheckFailed(f"driver {network.get('Driver')}, scope {network.get('Scope')}")
    if not network.get("Attachable") and config.mode == "managed":
        raise CheckFailed("not attachable: plain containers cannot join it")
    missing = []
    for service in spec.services:
        attached = _service_attrs(spec, service.name)["Spec"]["TaskTemplate"].get("Networks") or []
        if network["Id"] not in {n.get("Target") for n in attached}:
            missing.append(service.name)
    if missing:
        raise CheckFailed(f"not on it: {', '.join(missing)}")
    return f"overlay, attachable={network.get('Attachable')}, {len(spec.services)} services"


def _swarm_published(config: StackConfig, spec: Stack) -> str:
    published = {}
    for service in spec.services:
        ports = (_service_attrs(spec, service.name).get("Endpoint") or {}).get("Ports") or []
        published[service.name] = sorted(int(p.get("PublishedPort") or 0) for p in ports)
    wanted = {config.proxy_name: [config.api_host_port]}
    extra = {n: p for n, p in published.items() if p and p != wanted.get(n)}
    if extra or published.get(config.proxy_name) != [config.api_host_port]:
        raise CheckFailed(f"published: {json.dumps(published)}")
    return f"only {config.proxy_name} publishes {config.api_host_port} (host mode, its node)"


def _swarm_task_addresses(config: StackConfig, spec: Stack) -> set[str]:
    """The API tasks' addresses on the overlay (what ``tasks.<api>`` resolves to)."""
    listing = local().run(
        "docker service ps -q --filter desired-state=running %s",
        full_name(spec, config.api_name),
    )
    addresses = set()
    for task_id in listing.stdout.split():
        found = json.loads(local().run("docker inspect --type task %s", task_id).stdout or "[]")
        for attachment in (found[0] if found else {}).get("NetworksAttachments") or []:
            if attachment["Network"]["Spec"]["Name"] == config.network_name:
                addresses |= {a.split("/")[0] for a in attachment.get("Addresses") or []}
    return addresses


def _swarm_proxy(config: StackConfig, spec: Stack, task: Callable[[str], str]) -> str:
    addresses = _swarm_task_addresses(config, spec)
    up = {s.address for s in proxy.servers(task(config.proxy_name)) if s.up and not s.draining}
    if len(addresses) != config.api_replicas or addresses - up:
        raise CheckFailed(f"API tasks {sorted(addresses)}, UP in the proxy {sorted(up)}")
    return f"{len(addresses)} task(s) UP: {', '.join(sorted(addresses))}"


def _swarm_database_role(config: StackConfig, spec: Stack, task: Callable[[str], str]) -> str:
    return database_role(task(config.api_name), partial(server_address, spec, config.postgres_host))
