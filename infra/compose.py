"""Render a :class:`~infra.spec.Stack` as a compose file (Compose Specification format).

The output is accepted by ``docker-compose`` 1.29 (Debian bookworm) and by ``docker compose``
v2. Secret values are never written to it, nor passed through env: each service's
:class:`~infra.spec.SecretFile` is a top-level file-based ``secrets:`` entry (its host file
under ``.data/secrets``, written by ``infra.secrets_file``), mounted read-only at
``/run/secrets/<name>`` (outside swarm, both compose versions bind-mount the file).
Literal ``$`` in plain values is escaped as ``$$`` so compose does not interpolate it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from app_patch.settings import PROJECT_ROOT
from infra import secrets_file
from infra.secrets_file import host_path
from infra.spec import Healthcheck, Service, Stack

STACK_FILE_VERSION = "3.9"

PROJECT_LABEL = "com.docker.compose.project"

DEFAULT_PATH = PROJECT_ROOT / "infra" / "rendered" / "compose.yml"

HEADER = """\
# Rendered by infra/compose.py from infra/stack/ -- do not edit, re-render instead
# (`invoke compose`). No secret is in this file: the `secrets:` files it mounts are written
# by `invoke secrets` / `invoke up` (mode 0400, owned by the container user that reads them).
"""


def secret_key(service: str, file_name: str) -> str:
    """The top-level ``secrets:`` key of one service's secret file."""
    return re.sub(r"[^a-z0-9_]", "_", f"{service}_{file_name}".lower())


def adopt(
    spec: Stack,
    networks: Mapping[str, Mapping[str, str]],
    volumes: Mapping[str, Mapping[str, str]],
) -> Stack:
    """``spec`` with every network and volume that already exists but was not created by this
    compose project (``networks``/``volumes``: name -> labels of the existing ones) marked
    ``external``: compose then uses it as it is (v1 and v2 both accept ``external: true`` with
    ``name:``) and ``down`` never removes it. One made by hand with ``docker network create``
    has no project label; one another project made has another value."""

    def foreign(labels: Mapping[str, str] | None) -> bool:
        return labels is not None and labels.get(PROJECT_LABEL) != spec.project

    return dataclasses.replace(
        spec,
        networks=tuple(
            dataclasses.replace(n, external=True)
            if not n.external and foreign(networks.get(n.name))
            else n
            for n in spec.networks
        ),
        volumes=tuple(
            dataclasses.replace(v, external=True)
            if not v.external and foreign(volumes.get(v.name))
            else v
            for v in spec.volumes
        ),
    )


def swarm_secret_names(spec: Stack, values: Mapping[str, str]) -> dict[str, str]:
    """Secret key -> the swarm secret's name: the key and the first 12 hex digits of the
    SHA-256 of the file's content. Swarm secrets are immutable, so a rotated value gets a new
    name, and the services that mount it roll onto it (the old one is removed after)."""
    return {
        secret_key(service.name, f.name): swarm_secret_name(
            service.name, f.name, f.content.resolve(values)
        )
        for service in spec.services
        for f in service.secret_files
    }


def swarm_secret_name(service: str, file_name: str, content: str) -> str:
    """One swarm secret's name (see :func:`swarm_secret_names`); Pulumi's swarm target too."""
    digest = hashlib.sha256(content.encode()).hexdigest()[:12]
    return f"{secret_key(service, file_name)}-{digest}"


def render(
    spec: Stack,
    base_dir: Path = PROJECT_ROOT,
    secrets_root: Path | None = None,
    swarm_secrets: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The compose document; build contexts and secret files are made relative to
    ``base_dir`` (the directory the file will be written to). With ``swarm_secrets`` (from
    :func:`swarm_secret_names`), the stack file of a swarm spec (see the module docstring)."""
    root = secrets_root or secrets_file.SECRETS_ROOT
    swarm = swarm_secrets is not None
    document: dict[str, Any] = {"version": STACK_FILE_VERSION} if swarm else {}
    document["services"] = {
        service.name: _swarm_service(service) if swarm else _service(service, base_dir)
        for service in spec.services
    }
    document["networks"] = {
        network.name: (
            {"name": network.name, "external": True}
            if network.external
            else {"name": network.name, "driver": network.driver, "labels": dict(network.labels)}
            | ({"attachable": True} if network.attachable else {})
        )
        for network in spec.networks
    }
    secret_files = {
        secret_key(service.name, f.name): {
            "file": _relative(host_path(service.name, f, root), base_dir)
        }
        | ({"name": swarm_secrets[secret_key(service.name, f.name)]} if swarm_secrets else {})
        for service in spec.services
        for f in service.secret_files
    }
    if secret_files:
        document["secrets"] = secret_files
    if spec.volumes:
        document["volumes"] = {
            volume.name: (
                {"name": volume.name, "external": True}
                if volume.external
                else {"name": volume.name, "labels": dict(volume.labels)}
            )
            for volume in spec.volumes
        }
    return document


def dump(document: Mapping[str, Any]) -> str:
    return HEADER + yaml.safe_dump(dict(document), sort_keys=False, width=1000)


def write(spec: Stack, path: Path = DEFAULT_PATH, secrets_root: Path | None = None) -> Path:
    """Render ``spec`` to ``path`` (directories created); returns the path."""
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    document = render(spec, base_dir=path.parent, secrets_root=secrets_root)
    tmp.write_text(dump(document), encoding="utf-8")
    tmp.replace(path)
    return path


def _relative(path: Path, base_dir: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base_dir.resolve())).as_posix()


def _process(service: Service) -> dict[str, Any]:
    """The command and environment, ``$`` escaped (the same in a compose and a stack file)."""
    rendered: dict[str, Any] = {}
    if service.command is not None:
        rendered["command"] = [_escape(part) for part in service.command]
    if service.env:
        rendered["environment"] = {key: _escape(value) for key, value in service.env.items()}
    return rendered


def _networks(service: Service) -> dict[str, Any]:
    return {
        attachment.network: {"aliases": list(attachment.aliases)} for attachment in service.networks
    }


def _service(service: Service, base_dir: Path) -> dict[str, Any]:
    rendered: dict[str, Any] = {"container_name": service.name, "image": service.image}
    if service.build is not None:
        context = Path(os.path.relpath(PROJECT_ROOT / service.build.context, base_dir)).as_posix()
        rendered["build"] = {
            "context": context,
            "dockerfile": service.build.dockerfile,
            "args": {key: _escape(value) for key, value in service.build.args.items()},
        }
    rendered |= _process(service)
    if service.secret_files:
        rendered["secrets"] = [
            {"source": secret_key(service.name, f.name), "target": f.name}
            for f in service.secret_files
        ]
    rendered["networks"] = _networks(service)
    if service.volumes:
        rendered["volumes"] = [
            {"type": "volume", "source": mount.volume, "target": mount.target}
            | ({"read_only": True} if mount.read_only else {})
            for mount in service.volumes
        ]
    if service.ports:
        rendered["ports"] = [
            f"{port.host_ip}:{port.host_port}:{port.container_port}/{port.protocol}"
            for port in service.ports
        ]
    if service.healthcheck is not None:
        rendered["healthcheck"] = _healthcheck(service.healthcheck)
    if service.depends_on:
        rendered["depends_on"] = {
            name: {"condition": condition} for name, condition in service.depends_on.items()
        }
    rendered["restart"] = service.restart
    if service.user is not None:
        rendered["user"] = service.user
    if service.limits.memory_mb is not None:
        rendered["mem_limit"] = f"{service.limits.memory_mb}m"
    if service.limits.cpus is not None:
        rendered["cpus"] = service.limits.cpus
    if service.limits.pids is not None:
        rendered["pids_limit"] = service.limits.pids
    hardening = service.hardening
    if hardening.read_only:
        rendered["read_only"] = True
    if hardening.tmpfs:
        rendered["tmpfs"] = [f"{path}:{options}" for path, options in hardening.tmpfs.items()]
    rendered["cap_drop"] = list(hardening.cap_drop)
    if hardening.cap_add:
        rendered["cap_add"] = list(hardening.cap_add)
    if hardening.security_opt:
        rendered["security_opt"] = list(hardening.security_opt)
    if service.labels:
        rendered["labels"] = {key: _escape(value) for key, value in service.labels.items()}
    return rendered


def _swarm_service(service: Service) -> dict[str, Any]:
    """One service of a stack file (see the module docstring for what differs)."""
    rendered: dict[str, Any] = {"image": service.image}
    rendered |= _process(service)
    if service.secret_files:
        rendered["secrets"] = [
            {
                "source": secret_key(service.name, f.name),
                "target": f.name,
                "uid": str(f.uid),
                "gid": str(f.gid),
                "mode": f.mode,
            }
            for f in service.secret_files
        ]
    rendered["networks"] = _networks(service)
    mounts = [
        {"type": "volume", "source": mount.volume, "target": mount.target}
        | ({"read_only": True} if mount.read_only else {})
        for mount in service.volumes
    ] + [
        {"type": "tmpfs", "target": path, "tmpfs": {"size": tmpfs_size(options)}}
        for path, options in service.hardening.tmpfs.items()
    ]
    if mounts:
        rendered["volumes"] = mounts
    if service.ports:
        rendered["ports"] = [
            {
                "target": port.container_port,
                "published": port.host_port,
                "protocol": port.protocol,
                "mode": "host",
            }
            for port in service.ports
        ]
    if service.healthcheck is not None:
        rendered["healthcheck"] = _healthcheck(service.healthcheck)
    if service.user is not None:
        rendered["user"] = service.user
    if service.hardening.read_only:
        rendered["read_only"] = True
    rendered["cap_drop"] = list(service.hardening.cap_drop)
    if service.hardening.cap_add:
        rendered["cap_add"] = list(service.hardening.cap_add)
    labels = {key: _escape(value) for key, value in service.labels.items()}
    if labels:
        rendered["labels"] = labels
    rendered["stop_grace_period"] = f"{service.deploy.stop_grace_s}s"
    rendered["deploy"] = _deploy(service, labels)
    return rendered


def _deploy(service: Service, labels: Mapping[str, str]) -> dict[str, Any]:
    deploy = service.deploy
    limits: dict[str, Any] = {}
    if service.limits.memory_mb is not None:
        limits["memory"] = f"{service.limits.memory_mb}M"
    if service.limits.cpus is not None:
        limits["cpus"] = str(service.limits.cpus)
    if service.limits.pids is not None:
        limits["pids"] = service.limits.pids
    update = {
        "parallelism": 1,
        "delay": "0s",
        "order": deploy.order,
        "failure_action": "rollback",
        "monitor": f"{deploy.monitor_s}s",
        "max_failure_ratio": 0,
    }
    rendered: dict[str, Any] = {
        "mode": "replicated",
        "replicas": deploy.replicas,
        "endpoint_mode": "dnsrr",
        "labels": dict(labels),
        "restart_policy": {"condition": "any", "delay": "2s"},
        "update_config": update,
        "rollback_config": {**update, "failure_action": "pause"},
    }
    if deploy.constraints:
        rendered["placement"] = {"constraints": list(deploy.constraints)}
    if limits:
        rendered["resources"] = {"limits": limits}
    return rendered


def tmpfs_size(options: str) -> int:
    """The ``size=`` of tmpfs mount options in bytes (swarm's tmpfs mounts take a size and a
    mode only: ``noexec``/``nosuid``/``nodev`` are Docker's defaults for them)."""
    for option in options.split(","):
        key, _, value = option.partition("=")
        if key == "size":
            units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
            factor = units.get(value[-1:].lower(), 1)
            return int(value.rstrip("kKmMgG")) * factor
    return 64 << 20


def _healthcheck(check: Healthcheck) -> dict[str, Any]:
    return {
        "test": [_escape(part) for part in check.test],
        "interval": f"{check.interval_s}s",
        "timeout": f"{check.timeout_s}s",
        "retries": check.retries,
        "start_period": f"{check.start_period_s}s",
    }


def _escape(value: str) -> str:
    return value.replace("$", "$$")


def unescape(value: str) -> str:
    """Inverse of the ``$`` escaping, for readers of a rendered file."""
    return value.replace("$$", "$")
