"""testinfra checks of the running container stack (``invoke verify``).

Every check goes through pytest-testinfra: ``local://`` for ``docker inspect`` on the host,
``docker://<container>`` to look inside a container (the one exception connects to PostgreSQL
from here, with the URL read from the API container's own secret file, to ask
``app_patch.db_roles.role_problems``). Besides health and networking they hold the trust
boundary: no secret in any container's env or command line, each container hardened as the
spec says (checked in ``docker inspect`` and in the kernel's view of PID 1), the API's database
role unprivileged, the Redis app user refused admin commands (``ACL DRYRUN``) and ``maxmemory``
below the container's limit. ``run_checks`` never raises for a failed check: each becomes a
:class:`CheckResult`; ``report`` prints them and returns the exit code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx
import testinfra
from rich.console import Console
from rich.table import Table

from infra import docker_host, proxy
from infra.config import StackConfig, config_from_env
from infra.redis_acl import ALLOWED_TO_APP, DENIED_TO_APP, OUTSIDE_KEY
from infra.spec import NO_NEW_PRIVILEGES, SECRETS_DIR, Service, Stack
from infra.stack import (
    API_PORT,
    POSTGRES_PORT,
    PROMETHEUS_PORT,
    STORAGE_ROOT,
    STORAGE_VOLUME,
    api_replica_names,
    build_stack,
    redis_admin_cli,
)

# Linux capability numbers (include/uapi/linux/capability.h), for reading CapBnd.
_CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)
CAPABILITY_BITS = {name: bit for bit, name in enumerate(_CAPABILITIES)}
_URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]*:[^/@\s]+@")
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_URL$", re.I)


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


class CheckFailed(AssertionError):
    """A check's condition does not hold; the message says what was seen."""


def run_checks(config: StackConfig | None = None) -> list[CheckResult]:
    """All checks for the stack described by ``config`` (default: what ``up`` recorded,
    else the ``MA_INFRA_*`` environment).

    Hardening and secret exposure are checked for every container this stack declares (in
    external mode the shared servers are someone else's: only their health and network)."""
    config = config if config is not None else _recorded_config()
    spec = build_stack(config)
    ours = {service.name: service for service in spec.services}
    names = (
        config.postgres_host,
        config.redis_host,
        *api_replica_names(config),
        config.proxy_name,
    )
    checks: list[tuple[str, Callable[[], str]]] = []
    for name in names:
        checks.append((f"{name} running and healthy", partial(_healthy, name)))
        checks.append(
            (
                f"{name} on {config.network_name} as {name}",
                partial(_on_network, name, config.network_name),
            )
        )
    for name in names:
        if name in ours:
            checks.append(
                (
                    f"{name}: no password in Config.Env or Args",
                    partial(_no_secret_exposed, name, names),
                )
            )
            checks.append((f"{name} hardened", partial(_hardened, ours[name])))
    checks += [
        (f"{config.api_name} process is not root", lambda: _not_root(config.api_name)),
        (
            f"{config.api_name} trusts X-Forwarded-* only from FORWARDED_ALLOW_IPS",
            lambda: _forwarded_allow_ips(config.api_name),
        ),
        (
            f"{config.api_name}'s database role is unprivileged (role_problems)",
            lambda: _api_database_role(config),
        ),
        (
            f"{config.postgres_host} port {POSTGRES_PORT} not published on the host",
            lambda: _postgres_not_published(config),
        ),
        (
            f"the API replicas are reached only through {config.proxy_name}",
            lambda: _api_behind_proxy(config),
        ),
        (
            f"{config.proxy_name} routes to every API replica (all UP)",
            lambda: _proxy_sees_replicas(config),
        ),
        (
            f"{config.redis_host} refuses unauthenticated commands",
            lambda: _redis_requires_auth(config),
        ),
        (
            f"{STORAGE_VOLUME} mounted at {STORAGE_ROOT} and writable by the API user",
            lambda: _storage_writable(config.api_name),
        ),
    ]
    if config.monitoring:
        checks += [
            (
                f"{config.prometheus_name} scrapes every API replica (targets up)",
                lambda: _prometheus_targets(config),
            ),
            (
                f"{config.prometheus_name} loaded the alert rules",
                lambda: _prometheus_rules(config),
            ),
        ]
    if config.redis_host in ours:
        checks += [
            (
                f"{config.redis_host}: {config.redis_app_user} denied admin commands (ACL DRYRUN)",
                lambda: _redis_app_acl(config),
            ),
            (
                f"{config.redis_host}: maxmemory below the container limit, evicting",
                lambda: _redis_maxmemory(config),
            ),
        ]
    return [run_check(name, check) for name, check in checks]


def report(results: list[CheckResult], console: Console | None = None) -> int:
    """Print a table of results; 0 when all passed, 1 otherwise."""
    console = console or Console(soft_wrap=True)
    table = Table(title="container stack checks", show_lines=False)
    table.add_column("", width=2)
    table.add_column("check")
    table.add_column("detail", overflow="fold")
    for result in results:
        mark = "[green]✓[/green]" if result.ok else "[red]✗[/red]"
        table.add_row(mark, result.name, result.detail)
    console.print(table)
    failed = [result for result in results if not result.ok]
    if failed:
        console.print(f"[red]{len(failed)} of {len(results)} checks failed[/red]")
        return 1
    console.print(f"[green]all {len(results)} checks passed[/green]")
    return 0


def run_check(name: str, check: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(name, True, check())
    except CheckFailed as exc:
        return CheckResult(name, False, str(exc))
    except Exception as exc:  # a check must report, never abort the others
        return CheckResult(name, False, f"{type(exc).__name__}: {exc}".strip())


def _recorded_config() -> StackConfig:
    from infra.engines import record

    found = record.load()
    return (found.config if found else None) or config_from_env(os.environ)


def _local() -> Any:
    return testinfra.get_host("local://")


def _inside(container: str) -> Any:
    """A testinfra host inside a running container (commands run as its configured user)."""
    status = _inspect(container)["State"].get("Status")
    if status != "running":
        raise CheckFailed(f"{container} is {status}, not running")
    return testinfra.get_host(f"docker://{container}")


def _inspect(container: str) -> dict[str, Any]:
    result = _local().run("docker inspect --type container %s", container)
    if result.rc != 0:
        reason = (result.stderr.strip().splitlines() or ["docker inspect failed"])[0]
        raise CheckFailed(f"cannot inspect {container} (is the stack up?): {reason}")
    attrs: dict[str, Any] = json.loads(result.stdout)[0]
    return attrs


def _healthy(container: str) -> str:
    state = _inspect(container)["State"]
    health = (state.get("Health") or {}).get("Status", "none")
    if state.get("Status") != "running":
        raise CheckFailed(f"status {state.get('Status')}")
    if health != "healthy":
        raise CheckFailed(f"running but health is {health}")
    return f"running, {health}, restarts {state.get('RestartCount', 0) or 0}"


def _on_network(container: str, network: str) -> str:
    attrs = _inspect(container)
    networks = attrs["NetworkSettings"]["Networks"]
    if network not in networks:
        raise CheckFailed(f"attached to {sorted(networks)} only")
    aliases = networks[network].get("Aliases") or []
    # Docker's DNS answers a container's own name on user-defined networks, alias or not.
    if container not in aliases and attrs.get("Name", "").lstrip("/") != container:
        raise CheckFailed(f"{container} is neither its name nor among its aliases {aliases}")
    return f"{networks[network].get('IPAddress')} aliases {sorted(set(aliases))}"


def _not_root(container: str) -> str:
    host = _inside(container)
    status = host.file("/proc/1/status").content_string
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    uids = {int(value) for value in uid_line.split()[1:]}
    if 0 in uids:
        raise CheckFailed(f"PID 1 runs with uid(s) {sorted(uids)}")
    exec_user = host.user()
    if exec_user.uid == 0:
        raise CheckFailed("the container's default user is root")
    return f"PID 1 uid {sorted(uids)}, default user {exec_user.name} ({exec_user.uid})"


def _postgres_not_published(config: StackConfig) -> str:
    attrs = _inspect(config.postgres_host)
    key = f"{POSTGRES_PORT}/tcp"
    bindings = (attrs["NetworkSettings"].get("Ports") or {}).get(key) or []
    configured = (attrs["HostConfig"].get("PortBindings") or {}).get(key) or []
    published = [*bindings, *configured]
    if config.postgres_host_port:
        if not published:
            raise CheckFailed(f"postgresHostPort={config.postgres_host_port} but not published")
        return f"published on purpose (postgresHostPort): {json.dumps(published)}"
    if published:
        raise CheckFailed(f"published: {json.dumps(published)}")
    return "no host port binding"


def _api_behind_proxy(config: StackConfig) -> str:
    """No API replica publishes a port; the proxy publishes the API's."""
    for name in api_replica_names(config):
        bindings = _inspect(name)["HostConfig"].get("PortBindings") or {}
        if any(bindings.values()):
            raise CheckFailed(f"{name} publishes {json.dumps(bindings)}")
    published = _inspect(config.proxy_name)["HostConfig"].get("PortBindings") or {}
    if not any(published.values()):
        raise CheckFailed(f"{config.proxy_name} publishes nothing")
    return f"only {config.proxy_name} publishes: {json.dumps(published)}"


def _proxy_sees_replicas(config: StackConfig) -> str:
    replicas = api_replica_names(config)
    addresses = {docker_host.container_ip(name, config.network_name) for name in replicas}
    servers = proxy.servers(config.proxy_name)
    up = {s.address for s in servers if s.up and not s.draining}
    missing = addresses - up
    if missing:
        raise CheckFailed(f"not UP in the proxy: {', '.join(sorted(missing))}")
    return f"{len(addresses)} replica(s) UP: {', '.join(sorted(addresses))}"


def _prometheus_api(config: StackConfig, path: str) -> Any:
    address = docker_host.container_ip(config.prometheus_name, config.network_name)
    answer = httpx.get(f"http://{address}:{PROMETHEUS_PORT}{path}", timeout=5)
    if answer.status_code != 200:
        raise CheckFailed(f"GET {path}: HTTP {answer.status_code}")
    return answer.json()["data"]


def _prometheus_targets(config: StackConfig) -> str:
    """Every replica's address is an active target whose last scrape succeeded (a fresh
    Prometheus scrapes within its interval: waited for, bounded)."""
    wanted = {
        f"{docker_host.container_ip(name, config.network_name)}:{API_PORT}"
        for name in api_replica_names(config)
    }
    deadline = time.monotonic() + 45
    while True:
        active = _prometheus_api(config, "/api/v1/targets")["activeTargets"]
        health = {t["labels"].get("instance"): t["health"] for t in active}
        if all(health.get(target) == "up" for target in wanted):
            return f"{len(wanted)} target(s) up: {', '.join(sorted(wanted))}"
        if time.monotonic() >= deadline:
            raise CheckFailed(f"targets: {json.dumps(health)}; wanted up: {sorted(wanted)}")
        time.sleep(2)


def _prometheus_rules(config: StackConfig) -> str:
    groups = _prometheus_api(config, "/api/v1/rules")["groups"]
    rules = [rule["name"] for group in groups for rule in group.get("rules", [])]
    if not rules:
        raise CheckFailed("no rules loaded")
    return f"{len(rules)} rules in {len(groups)} group(s)"


def _redis_requires_auth(config: StackConfig) -> str:
    host = _inside(config.redis_host)
    anonymous = host.run("redis-cli -h 127.0.0.1 ping")
    answer = (anonymous.stdout + anonymous.stderr).strip()
    if "NOAUTH" not in answer:
        raise CheckFailed(f"unauthenticated PING answered {answer!r}")
    as_default = host.run("redis-cli -h 127.0.0.1 --no-auth-warning --user default --pass x ping")
    refused = (as_default.stdout + as_default.stderr).strip()
    if "PONG" in refused:
        raise CheckFailed("the default user still logs in")
    authed = host.run(redis_admin_cli(config, "ping"))
    if authed.stdout.strip() != "PONG":
        raise CheckFailed(f"PING as {config.redis_admin_user} answered {authed.stdout.strip()!r}")
    return f"anonymous: NOAUTH; default user: refused; {config.redis_admin_user}: PONG"


def _redis_app_acl(config: StackConfig) -> str:
    """``ACL DRYRUN`` (Redis 7) answers what a user could do without running anything."""
    host = _inside(config.redis_host)
    user = config.redis_app_user

    def dryrun(command: tuple[str, ...]) -> str:
        words = " ".join(shlex.quote(part) for part in command)
        result = host.run(redis_admin_cli(config, f"ACL DRYRUN {shlex.quote(user)} {words}"))
        return str(result.stdout + result.stderr).strip()

    allowed = [
        " ".join(c) for c in (*DENIED_TO_APP, OUTSIDE_KEY) if "no permissions" not in dryrun(c)
    ]
    if allowed:
        raise CheckFailed(f"{user} may run: {'; '.join(allowed)}")
    refused = {" ".join(c): dryrun(c) for c in ALLOWED_TO_APP}
    broken = [f"{command}: {answer}" for command, answer in refused.items() if answer != "OK"]
    if broken:
        raise CheckFailed(f"{user} lacks what the cache needs: {'; '.join(broken)}")
    denied = ", ".join(
        c[0] if c[0] not in {"CONFIG", "SCRIPT", "ACL"} else " ".join(c[:2]) for c in DENIED_TO_APP
    )
    return f"refused: {denied}, keys outside ma:v1:*; allowed: GET/SET/PING"


def _redis_maxmemory(config: StackConfig) -> str:
    host = _inside(config.redis_host)
    limit = int(_inspect(config.redis_host)["HostConfig"].get("Memory") or 0)
    answer = host.run(redis_admin_cli(config, "CONFIG GET maxmemory*"))
    words = answer.stdout.split()
    settings = dict(zip(words[::2], words[1::2], strict=False))
    maxmemory = int(settings.get("maxmemory", "0") or 0)
    policy = settings.get("maxmemory-policy", "")
    if not limit:
        raise CheckFailed("the container has no memory limit")
    if not 0 < maxmemory <= limit * 0.9:
        raise CheckFailed(f"maxmemory {maxmemory} is not below 90% of the limit {limit}")
    if policy not in {"allkeys-lru", "allkeys-lfu"}:
        raise CheckFailed(f"maxmemory-policy is {policy!r}: a full cache would refuse writes")
    share = 100 * maxmemory // limit
    return f"maxmemory {maxmemory >> 20} MiB ({share}% of {limit >> 20} MiB), {policy}"


def _no_secret_exposed(container: str, all_containers: tuple[str, ...]) -> str:
    """No secret value (any container's, read from their own secret files) and nothing that
    looks like one (a *PASSWORD* variable, a URL with a password) in the container's
    environment or command line as ``docker inspect`` shows them."""
    attrs = _inspect(container)
    config = attrs.get("Config") or {}
    env = [str(item) for item in config.get("Env") or []]
    raw = [
        attrs.get("Path"),
        *(attrs.get("Args") or []),
        *(config.get("Cmd") or []),
        *(config.get("Entrypoint") or []),
    ]
    words = [str(word) for word in raw if word]
    values = _secret_values(all_containers)
    problems = []
    for item in env:
        key, _, value = item.partition("=")
        if _SECRET_NAME.search(key) and not key.endswith("_FILE") and value:
            problems.append(f"env {key} is set")
        if _URL_WITH_PASSWORD.search(value):
            problems.append(f"env {key} holds a URL with a password")
    for text in env + words:
        if any(secret in text for secret in values):
            problems.append(f"a secret value appears in {text.partition('=')[0][:40]!r}")
    if problems:
        raise CheckFailed("; ".join(sorted(set(problems))))
    return f"{len(env)} env vars and {len(words)} args checked against {len(values)} secret values"


def _secret_values(containers: tuple[str, ...]) -> set[str]:
    """Every secret the stack's containers hold, from their files under /run/secrets (read
    inside each container as its own user), passwords in URLs also as they appear quoted."""
    values: set[str] = set()
    for container in containers:
        try:
            host = _inside(container)
        except CheckFailed:
            continue
        listing = host.run(f"ls -1 {SECRETS_DIR} 2>/dev/null")
        for name in listing.stdout.split():
            text = host.run(f"cat {SECRETS_DIR}/{shlex.quote(name)}").stdout.strip()
            if not text:
                continue
            password = urlsplit(text).password if "://" in text else None
            if password:
                values |= {unquote(password), password}
            else:
                values |= {text, quote(text, safe="")}
    return {value for value in values if len(value) >= 8}


def _hardened(service: Service, container: str | None = None, swarm: bool = False) -> str:
    """What the spec asks, as the engine applied it and as the kernel enforces it on PID 1.
    ``swarm``: a task ``container`` of a swarm service, which cannot have no-new-privileges
    (Docker 20.10 services have no such setting) and gets its tmpfs as a mount."""
    container = container or service.name
    attrs = _inspect(container)
    host_config = attrs.get("HostConfig") or {}
    hardening = service.hardening
    problems = []
    dropped = {_cap(c) for c in host_config.get("CapDrop") or []}
    added = {_cap(c) for c in host_config.get("CapAdd") or []}
    if "ALL" not in dropped:
        problems.append(f"CapDrop is {sorted(dropped)}, not ALL")
    if added != set(hardening.cap_add):
        problems.append(f"CapAdd is {sorted(added)}, expected {sorted(hardening.cap_add)}")
    no_new_privileges = any(
        o.startswith("no-new-privileges") for o in host_config.get("SecurityOpt") or []
    )
    if not no_new_privileges and not swarm:
        problems.append("no-new-privileges is not set")
    pids = int(host_config.get("PidsLimit") or 0)
    if pids <= 0 or (service.limits.pids is not None and pids != service.limits.pids):
        problems.append(f"PidsLimit is {pids or 'unlimited'}, expected {service.limits.pids}")
    if hardening.read_only:
        if not host_config.get("ReadonlyRootfs"):
            problems.append("the root filesystem is writable")
        tmpfs = set(host_config.get("Tmpfs") or {}) | {
            m.get("Target") for m in host_config.get("Mounts") or [] if m.get("Type") == "tmpfs"
        }
        missing = set(hardening.tmpfs) - tmpfs
        if missing:
            problems.append(f"no tmpfs at {sorted(missing)}")
    status = _inside(container).file("/proc/1/status").content_string
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields.get("NoNewPrivs", "").strip() != "1" and not swarm:
        problems.append("PID 1 runs without NoNewPrivs")
    bounding = int(fields.get("CapBnd", "0").strip() or "0", 16)
    allowed = sum(1 << CAPABILITY_BITS[cap] for cap in hardening.cap_add)
    if bounding & ~allowed:
        extra = sorted(
            cap for cap, bit in CAPABILITY_BITS.items() if bounding & ~allowed & (1 << bit)
        )
        problems.append(f"PID 1 may still gain {', '.join(extra)}")
    if hardening.read_only:
        # As root, who owns /: only a read-only mount stops it (without caps, root of the
        # container may still write where it owns).
        probe = f"/.verify-{secrets.token_hex(4)}"
        written = _local().run("docker exec -u 0 %s touch %s", container, probe)
        if written.rc == 0:
            _local().run("docker exec -u 0 %s rm -f %s", container, probe)
            problems.append("writing to / succeeded")
    if problems:
        raise CheckFailed("; ".join(problems))
    kept = ", ".join(sorted(hardening.cap_add)) or "none"
    rootfs = f", read-only root + tmpfs {', '.join(hardening.tmpfs)}" if hardening.read_only else ""
    privileges = (
        "no-new-privileges: not available to swarm services" if swarm else NO_NEW_PRIVILEGES
    )
    return f"caps: ALL dropped, kept {kept}; {privileges}; pids {pids}{rootfs}"


def run_swarm_checks(config: StackConfig, spec: Stack) -> list[CheckResult]:
    """The checks of a swarm stack (``invoke verify`` on the swarm engine), on the services
    (``docker service inspect``) and on their tasks' containers on this node (the storage
    node, where the servers and the API run): every service's replicas running and healthy,
    the overlay, the secrets mounted as the spec says and in no service spec, nothing
    published but the API's port, the hardening swarm supports, the proxy routing to every
    API task, and the same trust-boundary checks as on one engine."""
    from infra.engines import swarm

    checks: list[tuple[str, Callable[[], str]]] = []
    tasks: dict[str, str] = {}

    def task(name: str) -> str:
        if name not in tasks:
            tasks[name] = swarm.task_container(spec, name)
        return tasks[name]

    names = [service.name for service in spec.services]
    for service in spec.services:
        full = swarm.full_name(spec, service.name)
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
        (f"{config.api_name} process is not root", lambda: _not_root(task(config.api_name))),
        (
            f"{config.api_name} trusts X-Forwarded-* only from FORWARDED_ALLOW_IPS",
            lambda: _forwarded_allow_ips(task(config.api_name)),
        ),
        (
            f"{config.api_name}'s database role is unprivileged (role_problems)",
            lambda: _swarm_database_role(config, spec, task),
        ),
        (
            f"{STORAGE_VOLUME} mounted at {STORAGE_ROOT} and writable by the API user",
            lambda: _storage_writable(task(config.api_name)),
        ),
    ]
    if config.redis_host in names:

        def redis() -> StackConfig:
            return dataclasses.replace(config, redis_host=task(config.redis_host))

        checks += [
            (
                f"{config.redis_host} refuses unauthenticated commands",
                lambda: _redis_requires_auth(redis()),
            ),
            (
                f"{config.redis_host}: {config.redis_app_user} denied admin commands (ACL DRYRUN)",
                lambda: _redis_app_acl(redis()),
            ),
            (
                f"{config.redis_host}: maxmemory below the container limit, evicting",
                lambda: _redis_maxmemory(redis()),
            ),
        ]
    return [run_check(name, check) for name, check in checks]


def _swarm_hardened(service: Service, task: Callable[[str], str]) -> str:
    return _hardened(service, task(service.name), swarm=True)


def _service_attrs(spec: Stack, name: str) -> dict[str, Any]:
    from infra.engines import swarm

    result = _local().run("docker service inspect %s", swarm.full_name(spec, name))
    if result.rc != 0:
        raise CheckFailed(f"no swarm service {swarm.full_name(spec, name)}")
    attrs: dict[str, Any] = json.loads(result.stdout)[0]
    return attrs


def _swarm_replicas(spec: Stack, service: Service) -> str:
    from infra.engines import swarm

    full = swarm.full_name(spec, service.name)
    listing = _local().run(
        "docker service ps --filter desired-state=running --format '{{.CurrentState}}' %s", full
    )
    states = [line.split()[0] for line in listing.stdout.splitlines() if line.strip()]
    running = states.count("Running")
    if running != service.deploy.replicas:
        raise CheckFailed(f"{running} of {service.deploy.replicas} running ({', '.join(states)})")
    containers = swarm.task_containers(spec, service.name)
    health = [str((c["State"].get("Health") or {}).get("Status", "none")) for c in containers]
    unhealthy = [h for h in health if h != "healthy"]
    if unhealthy or len(containers) != service.deploy.replicas:
        raise CheckFailed(f"task containers on this node: {', '.join(health) or 'none'}")
    return f"{running} running, healthy: {len(health)}"


def _swarm_spec_clean(spec: Stack, service: Service, task: Callable[[str], str]) -> str:
    """Nothing secret in ``docker service inspect`` (the values the tasks read from their
    files, and anything that looks like a password), nor in the task's ``docker inspect``."""
    text = json.dumps(_service_attrs(spec, service.name))
    values = _secret_values(tuple(task(s.name) for s in spec.services))
    if any(value in text for value in values):
        raise CheckFailed("a secret value appears in the service spec")
    env = _service_attrs(spec, service.name)["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env")
    for item in env or []:
        key, _, value = str(item).partition("=")
        if (_SECRET_NAME.search(key) and not key.endswith("_FILE") and value) or (
            _URL_WITH_PASSWORD.search(value)
        ):
            raise CheckFailed(f"env {key} carries a secret")
    inside = _no_secret_exposed(task(service.name), tuple(task(s.name) for s in spec.services))
    return f"service spec checked against {len(values)} secret values; task: {inside}"


def _swarm_secrets(spec: Stack, service: Service, task: Callable[[str], str]) -> str:
    if not service.secret_files:
        return "none needed"
    mounted = _service_attrs(spec, service.name)["Spec"]["TaskTemplate"]["ContainerSpec"]
    refs = {r["File"]["Name"]: r for r in mounted.get("Secrets") or []}
    problems = []
    host = _inside(task(service.name))
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
    result = _local().run("docker network inspect %s", config.network_name)
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
    from infra.engines import swarm

    listing = _local().run(
        "docker service ps -q --filter desired-state=running %s",
        swarm.full_name(spec, config.api_name),
    )
    addresses = set()
    for task_id in listing.stdout.split():
        found = json.loads(_local().run("docker inspect --type task %s", task_id).stdout or "[]")
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
    from app_patch.db_roles import role_problems
    from infra.engines import swarm

    url = _inside(task(config.api_name)).run(f"cat {SECRETS_DIR}/db_url").stdout.strip()
    if not url:
        raise CheckFailed(f"{SECRETS_DIR}/db_url is missing or empty")
    parts = urlsplit(url)
    address = swarm.server_address(spec, config.postgres_host)
    netloc = parts.netloc.rsplit("@", 1)[0] + f"@{address}:{parts.port or POSTGRES_PORT}"
    problems = role_problems(urlunsplit(parts._replace(netloc=netloc)))
    if problems:
        raise CheckFailed("; ".join(problems))
    return f"role {parts.username}: not a superuser, cannot CREATE or DROP tables, owns nothing"


def _cap(name: str) -> str:
    return str(name).upper().removeprefix("CAP_")


def _forwarded_allow_ips(container: str) -> str:
    attrs = _inspect(container)
    config = attrs.get("Config") or {}
    words = [
        *(config.get("Entrypoint") or []),
        *(config.get("Cmd") or []),
        *(attrs.get("Args") or []),
    ]
    env = dict(str(item).partition("=")[::2] for item in config.get("Env") or [])
    if "--forwarded-allow-ips" in words:
        raise CheckFailed(f"the command sets --forwarded-allow-ips: {' '.join(map(str, words))}")
    trusted = env.get("FORWARDED_ALLOW_IPS", "127.0.0.1 (uvicorn's default)")
    if "*" in trusted:
        raise CheckFailed("FORWARDED_ALLOW_IPS trusts any client")
    return f"FORWARDED_ALLOW_IPS={trusted}"


def _api_database_role(config: StackConfig) -> str:
    """The API's own URL (its secret file, read inside it), pointed at the PostgreSQL
    container's address on the network (this host cannot resolve the container name)."""
    from app_patch.db_roles import role_problems
    from infra.docker_host import container_ip

    url = _inside(config.api_name).run(f"cat {SECRETS_DIR}/db_url").stdout.strip()
    if not url:
        raise CheckFailed(f"{SECRETS_DIR}/db_url is missing or empty in {config.api_name}")
    parts = urlsplit(url)
    address = container_ip(config.postgres_host, config.network_name)
    netloc = parts.netloc.rsplit("@", 1)[0] + f"@{address}:{parts.port or POSTGRES_PORT}"
    problems = role_problems(urlunsplit(parts._replace(netloc=netloc)))
    if problems:
        raise CheckFailed("; ".join(problems))
    return f"role {parts.username}: not a superuser, cannot CREATE or DROP tables, owns nothing"


def _storage_writable(container: str) -> str:
    mounts = _inspect(container).get("Mounts") or []
    mount = next((m for m in mounts if m.get("Destination") == STORAGE_ROOT), None)
    if mount is None:
        raise CheckFailed(f"nothing mounted at {STORAGE_ROOT}")
    if mount.get("Type") != "volume" or mount.get("Name") != STORAGE_VOLUME:
        raise CheckFailed(f"{STORAGE_ROOT} is {mount.get('Type')} {mount.get('Name')}")
    if not mount.get("RW", False):
        raise CheckFailed(f"{STORAGE_ROOT} is mounted read-only")
    host = _inside(container)
    if not host.mount_point(STORAGE_ROOT).exists:
        raise CheckFailed(f"{STORAGE_ROOT} is not a mount point inside the container")
    probe = f"{STORAGE_ROOT}/.verify-{secrets.token_hex(6)}"
    written = host.run(f"echo ok > {probe} && cat {probe} && rm -f {probe}")
    if written.rc != 0 or written.stdout.strip() != "ok":
        raise CheckFailed(f"write as {host.user().name} failed: {written.stderr.strip()}")
    return f"volume {STORAGE_VOLUME}, written and removed a file as {host.user().name}"


def main() -> int:
    return report(run_checks())


if __name__ == "__main__":
    raise SystemExit(main())
