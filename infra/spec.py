"""Plain data describing a container stack, independent of any tool that deploys it.

A :class:`Stack` holds networks, volumes and services. Renderers (``infra.pulumi_program``,
``infra.compose``) turn it into resources; nothing here talks to Docker or Pulumi.

Secrets never live in the spec, and never reach a container's environment or command line
(``docker inspect`` would show them): a service gets each one as a :class:`SecretFile` under
``/run/secrets``, whose content is a :class:`SecretTemplate` such as
``"redis://media-app:{redis_app_password}@af-redis-1:6379/0"`` with placeholders naming
entries of :attr:`Stack.secrets`; the service's env only names the file
(``MA_REDIS_URL_FILE=/run/secrets/redis_url``). Each renderer writes the files from its own
secret source at the last moment: Pulumi uploads them from secret outputs, compose mounts
files that ``invoke up`` wrote under ``.data/secrets`` (see ``infra.secrets_file``).
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

RestartPolicy = Literal["no", "always", "on-failure", "unless-stopped"]
DependencyCondition = Literal["service_started", "service_healthy"]
SECRETS_DIR = "/run/secrets"
"""Where every service finds its secret files (the compose convention)."""
NO_NEW_PRIVILEGES = "no-new-privileges:true"


class SpecError(ValueError):
    """The spec is inconsistent (a reference to something it does not declare)."""


@dataclass(frozen=True)
class Secret:
    """A named secret the stack needs; ``setting`` is the user-facing name of its source.
    ``managed_only``: it belongs to a server only a managed stack creates."""

    name: str
    setting: str
    description: str = ""
    managed_only: bool = False


@dataclass(frozen=True)
class SecretTemplate:
    """A value built from secrets: ``str.format`` placeholders name :class:`Secret`s.

    ``url_quote`` percent-encodes each substituted value (for passwords inside URLs).
    """

    template: str
    url_quote: bool = False
    sha256: bool = False  # the file holds the value's SHA-256 hex digest, not the value

    def secret_names(self) -> tuple[str, ...]:
        names = [name for _, name, _, _ in string.Formatter().parse(self.template) if name]
        return tuple(dict.fromkeys(names))

    def resolve(self, values: Mapping[str, str]) -> str:
        missing = [name for name in self.secret_names() if name not in values]
        if missing:
            raise SpecError(f"no value for secret(s) {', '.join(missing)}")
        used = {name: values[name] for name in self.secret_names()}
        if self.url_quote:
            used = {name: quote(value, safe="") for name, value in used.items()}
        resolved = self.template.format(**used)
        return hashlib.sha256(resolved.encode()).hexdigest() if self.sha256 else resolved


@dataclass(frozen=True)
class SecretFile:
    """A file ``/run/secrets/<name>`` holding ``content`` resolved, readable only by ``uid``.

    Mode 0400 owned by ``uid``:``gid``, so it is readable by exactly the process that needs it:
    the API user (10001) for its URLs; root (0) for the PostgreSQL/Redis entrypoints, which
    read them before they drop to their service user. ``read_at_start``: the service reads it
    when it starts, so a new value means recreating the service; False for files read only
    once ever (PostgreSQL's, at initdb: a rotated role password is applied in the database).
    """

    name: str
    content: SecretTemplate
    uid: int = 0
    gid: int = 0
    mode: int = 0o400
    read_at_start: bool = True

    @property
    def target(self) -> str:
        return f"{SECRETS_DIR}/{self.name}"


@dataclass(frozen=True)
class Hardening:
    """Kernel-level limits of a container: ``cap_add`` is all it keeps (everything else is
    dropped), ``read_only`` makes the root filesystem read-only with ``tmpfs`` (path -> mount
    options) for what it must write, ``no_new_privileges`` blocks setuid gains."""

    cap_add: tuple[str, ...] = ()
    read_only: bool = False
    tmpfs: Mapping[str, str] = field(default_factory=dict)
    no_new_privileges: bool = True

    @property
    def cap_drop(self) -> tuple[str, ...]:
        return ("ALL",)

    @property
    def security_opt(self) -> tuple[str, ...]:
        return (NO_NEW_PRIVILEGES,) if self.no_new_privileges else ()


@dataclass(frozen=True)
class Build:
    """How to build a service's image: ``context`` relative to the repository root,
    ``dockerfile`` relative to the context."""

    context: str
    dockerfile: str = "Dockerfile"
    args: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Healthcheck:
    """Docker healthcheck; ``test`` is ``("CMD", ...)`` or ``("CMD-SHELL", "...")``."""

    test: tuple[str, ...]
    interval_s: int = 5
    timeout_s: int = 5
    retries: int = 12
    start_period_s: int = 10


@dataclass(frozen=True)
class NetworkAttachment:
    network: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class VolumeMount:
    volume: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class PortMapping:
    """A container port published on the host (``host_ip`` defaults to loopback only)."""

    container_port: int
    host_port: int
    host_ip: str = "127.0.0.1"
    protocol: Literal["tcp", "udp"] = "tcp"


@dataclass(frozen=True)
class Limits:
    memory_mb: int | None = None
    cpus: float | None = None
    pids: int | None = None


@dataclass(frozen=True)
class Deploy:
    """How a swarm runs a service (only the stack-file and Pulumi swarm renderings read it):
    ``replicas`` tasks, ``constraints`` on the nodes they may run on, and the rolling update:
    ``order`` ``start-first`` (a new task healthy before an old one stops) or ``stop-first``
    (one data directory: never two servers on it), rolled back automatically when a new task
    fails within ``monitor_s``."""

    replicas: int = 1
    constraints: tuple[str, ...] = ()
    order: Literal["start-first", "stop-first"] = "stop-first"
    monitor_s: int = 10
    stop_grace_s: int = 20


@dataclass(frozen=True)
class Service:
    """One container. ``name`` is the container name and its key in every rendering."""

    name: str
    image: str
    build: Build | None = None
    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    secret_files: tuple[SecretFile, ...] = ()
    networks: tuple[NetworkAttachment, ...] = ()
    volumes: tuple[VolumeMount, ...] = ()
    ports: tuple[PortMapping, ...] = ()
    healthcheck: Healthcheck | None = None
    depends_on: Mapping[str, DependencyCondition] = field(default_factory=dict)
    restart: RestartPolicy = "unless-stopped"
    user: str | None = None
    limits: Limits = field(default_factory=Limits)
    hardening: Hardening = field(default_factory=Hardening)
    labels: Mapping[str, str] = field(default_factory=dict)
    deploy: Deploy = field(default_factory=Deploy)

    def resolved_files(self, secrets: Mapping[str, str]) -> dict[str, str]:
        """Secret file contents by target path, secrets substituted (renderers and tests)."""
        return {f.target: f.content.resolve(secrets) for f in self.secret_files}


@dataclass(frozen=True)
class Network:
    """A Docker network; ``external`` ones exist already and are only referenced by name."""

    name: str
    driver: str = "bridge"
    external: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    attachable: bool = False  # overlay only: plain containers may join it too


@dataclass(frozen=True)
class Volume:
    name: str
    external: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stack:
    """A whole deployment. ``referenced_services`` exist outside the stack (external mode):
    the stack's services talk to them by name but nothing of theirs is declared."""

    project: str
    networks: tuple[Network, ...]
    volumes: tuple[Volume, ...]
    services: tuple[Service, ...]
    secrets: tuple[Secret, ...] = ()
    referenced_services: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.validate()

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def ordered_services(self) -> tuple[Service, ...]:
        """Services with every dependency before its dependants (declaration order otherwise)."""
        ordered: list[Service] = []
        placed: set[str] = set()
        pending = list(self.services)
        while pending:
            ready = [s for s in pending if all(dep in placed for dep in s.depends_on)]
            if not ready:
                names = ", ".join(s.name for s in pending)
                raise SpecError(f"dependency cycle among services: {names}")
            for service in ready:
                ordered.append(service)
                placed.add(service.name)
            pending = [s for s in pending if s.name not in placed]
        return tuple(ordered)

    def secret(self, name: str) -> Secret:
        for secret in self.secrets:
            if secret.name == name:
                return secret
        raise KeyError(name)

    def validate(self) -> None:
        _unique("network", [n.name for n in self.networks])
        _unique("volume", [v.name for v in self.volumes])
        _unique("service", [s.name for s in self.services])
        _unique("secret", [s.name for s in self.secrets])
        networks = {n.name for n in self.networks}
        volumes = {v.name for v in self.volumes}
        services = {s.name for s in self.services}
        secrets = {s.name for s in self.secrets}
        for service in self.services:
            where = f"service {service.name!r}"
            for attachment in service.networks:
                _known(where, "network", attachment.network, networks)
            for mount in service.volumes:
                _known(where, "volume", mount.volume, volumes)
            for dependency in service.depends_on:
                _known(where, "dependency", dependency, services)
            _unique(f"{where} secret file", [f.name for f in service.secret_files])
            for secret_file in service.secret_files:
                for name in secret_file.content.secret_names():
                    _known(where, "secret", name, secrets)
            for key, value in service.env.items():
                if any(f"{{{name}}}" in value for name in secrets):
                    raise SpecError(f"{where}: env {key} would carry a secret (use a file)")
            if service.healthcheck is None and any(
                service.name in other.depends_on
                and other.depends_on[service.name] == "service_healthy"
                for other in self.services
            ):
                raise SpecError(f"{where} is waited on for health but has no healthcheck")
        self.ordered_services()


def _unique(kind: str, names: list[str]) -> None:
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SpecError(f"duplicate {kind} name(s): {', '.join(duplicates)}")


def _known(where: str, kind: str, name: str, known: set[str]) -> None:
    if name not in known:
        raise SpecError(f"{where} references undeclared {kind} {name!r}")
