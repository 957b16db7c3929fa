"""Render a :class:`~infra.spec.Stack` as a compose file (Compose Specification format).

The output is accepted by ``docker-compose`` 1.29 (Debian bookworm) and by ``docker compose``
v2. Secret env values are never written: each becomes ``${MA_SECRET_<SERVICE>_<VAR>:?...}``
and :func:`secret_environment` computes the values to pass in the environment of the compose
process. Literal ``$`` in plain values is escaped as ``$$`` so compose does not interpolate it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from infra.spec import Healthcheck, Service, Stack

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATH = REPO_ROOT / "infra" / "rendered" / "compose.yml"

HEADER = """\
# Rendered by infra/compose.py from infra/stack.py -- do not edit, re-render instead
# (`invoke compose`). Secret values are not in this file: run it through `invoke up`,
# or export the MA_SECRET_* variables it references before `docker-compose up`.
"""


def secret_variable(service: str, env_name: str) -> str:
    """Name of the compose variable carrying one secret env value."""
    return "MA_SECRET_" + re.sub(r"[^A-Z0-9]", "_", f"{service}_{env_name}".upper())


def secret_environment(spec: Stack, secrets: Mapping[str, str]) -> dict[str, str]:
    """The variables (name -> value) the rendered file needs at ``up`` time."""
    return {
        secret_variable(service.name, key): value.resolve(secrets)
        for service in spec.services
        for key, value in service.secret_env.items()
    }


def render(spec: Stack, base_dir: Path = REPO_ROOT) -> dict[str, Any]:
    """The compose document; build contexts are made relative to ``base_dir``
    (the directory the file will be written to)."""
    document: dict[str, Any] = {
        "services": {service.name: _service(service, base_dir) for service in spec.services},
        "networks": {
            network.name: (
                {"name": network.name, "external": True}
                if network.external
                else {
                    "name": network.name,
                    "driver": network.driver,
                    "labels": dict(network.labels),
                }
            )
            for network in spec.networks
        },
    }
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


def write(spec: Stack, path: Path = DEFAULT_PATH) -> Path:
    """Render ``spec`` to ``path`` (directories created); returns the path."""
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dump(render(spec, base_dir=path.parent)), encoding="utf-8")
    tmp.replace(path)
    return path


def _service(service: Service, base_dir: Path) -> dict[str, Any]:
    rendered: dict[str, Any] = {"container_name": service.name, "image": service.image}
    if service.build is not None:
        context = Path(os.path.relpath(REPO_ROOT / service.build.context, base_dir)).as_posix()
        rendered["build"] = {
            "context": context,
            "dockerfile": service.build.dockerfile,
            "args": {key: _escape(value) for key, value in service.build.args.items()},
        }
    if service.command is not None:
        rendered["command"] = [_escape(part) for part in service.command]
    environment = {key: _escape(value) for key, value in service.env.items()}
    for key in service.secret_env:
        variable = secret_variable(service.name, key)
        environment[key] = f"${{{variable}:?{variable} must be set (use invoke up)}}"
    if environment:
        rendered["environment"] = environment
    rendered["networks"] = {
        attachment.network: {"aliases": list(attachment.aliases)} for attachment in service.networks
    }
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
    if service.labels:
        rendered["labels"] = {key: _escape(value) for key, value in service.labels.items()}
    return rendered


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
