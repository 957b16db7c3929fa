"""testinfra checks of the running container stack (``invoke verify``).

Every check goes through pytest-testinfra: ``local://`` for ``docker inspect`` on the host,
``docker://<container>`` to look inside a container. ``run_checks`` never
raises for a failed check: each becomes a :class:`CheckResult`; ``report`` prints them and
returns the exit code.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import testinfra
from rich.console import Console
from rich.table import Table

from infra.config import StackConfig, config_from_env
from infra.stack import POSTGRES_PORT, STORAGE_ROOT, STORAGE_VOLUME


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


class CheckFailed(AssertionError):
    """A check's condition does not hold; the message says what was seen."""


def run_checks(config: StackConfig | None = None) -> list[CheckResult]:
    """All checks for the stack described by ``config`` (default: what ``up`` recorded,
    else the ``MA_INFRA_*`` environment)."""
    config = config if config is not None else _recorded_config()
    checks: list[tuple[str, Callable[[], str]]] = []
    for name in (config.postgres_host, config.redis_host, config.api_name):
        checks.append((f"{name} running and healthy", partial(_healthy, name)))
        checks.append(
            (
                f"{name} on {config.network_name} as {name}",
                partial(_on_network, name, config.network_name),
            )
        )
    checks += [
        (f"{config.api_name} process is not root", lambda: _not_root(config.api_name)),
        (
            f"{config.postgres_host} port {POSTGRES_PORT} not published on the host",
            lambda: _postgres_not_published(config),
        ),
        (
            f"{config.redis_host} refuses unauthenticated commands",
            lambda: _redis_requires_auth(config.redis_host),
        ),
        (
            f"{STORAGE_VOLUME} mounted at {STORAGE_ROOT} and writable by the API user",
            lambda: _storage_writable(config.api_name),
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
    from infra.engine import recorded_config

    return recorded_config() or config_from_env(os.environ)


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
    published = bindings + configured
    if config.postgres_host_port:
        if not published:
            raise CheckFailed(f"postgresHostPort={config.postgres_host_port} but not published")
        return f"published on purpose (postgresHostPort): {json.dumps(published)}"
    if published:
        raise CheckFailed(f"published: {json.dumps(published)}")
    return "no host port binding"


def _redis_requires_auth(container: str) -> str:
    host = _inside(container)
    anonymous = host.run("redis-cli -h 127.0.0.1 ping")
    answer = (anonymous.stdout + anonymous.stderr).strip()
    if "NOAUTH" not in answer:
        raise CheckFailed(f"unauthenticated PING answered {answer!r}")
    authed = host.run('REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -h 127.0.0.1 ping')
    if authed.stdout.strip() != "PONG":
        raise CheckFailed(f"authenticated PING answered {authed.stdout.strip()!r}")
    return "anonymous: NOAUTH; with the password: PONG"


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
