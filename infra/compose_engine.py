"""Run the rendered compose file on the local engine with whichever compose CLI exists.

``docker compose`` (v2 plugin) is preferred; Debian bookworm only packages the v1 Python tool
``docker-compose`` 1.29, which reads the same file. No secret reaches the CLI: the file mounts
the secret files ``infra.secrets_file`` wrote (``up`` writes them first).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from contextlib import closing
from functools import cache
from pathlib import Path

from docker.errors import NotFound

from infra import compose, docker_host, secrets_file
from infra.spec import Stack

RENDERED_PATH = compose.DEFAULT_PATH


class ComposeError(RuntimeError):
    """The compose CLI is missing or a compose command failed."""


@cache
def compose_command() -> tuple[str, ...] | None:
    """The compose CLI to use, or None when neither v2 nor v1 is installed and working."""
    candidates: list[tuple[str, ...]] = []
    if shutil.which("docker"):
        candidates.append(("docker", "compose"))
    if shutil.which("docker-compose"):
        candidates.append(("docker-compose",))
    for command in candidates:
        try:
            probe = subprocess.run(
                [*command, "version"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return command
    return None


def run(
    spec: Stack,
    args: list[str],
    path: Path = RENDERED_PATH,
    timeout_s: float = 600,
    log: Callable[[str], None] = lambda line: None,
) -> str:
    """``<compose> -p <project> -f <path> <args>``."""
    command = compose_command()
    if command is None:
        raise ComposeError("no compose CLI: install docker-compose (apt) or the compose plugin")
    env = dict(os.environ)
    full = [*command, "-p", spec.project, "-f", str(path), *args]
    log(" ".join(full))
    try:
        result = subprocess.run(
            full, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ComposeError(f"{' '.join(args)} did not finish within {timeout_s:.0f}s") from exc
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise ComposeError(f"`{' '.join(full)}` failed ({result.returncode}):\n{output[-4000:]}")
    return output


def validate(spec: Stack, path: Path = RENDERED_PATH) -> None:
    """``config -q``: the CLI accepts the rendered file."""
    run(spec, ["config", "-q"], path)


def up(
    spec: Stack,
    secrets: Mapping[str, str],
    path: Path = RENDERED_PATH,
    log: Callable[[str], None] = lambda line: None,
    secrets_root: Path | None = None,
) -> Path:
    """Write the secret files, render ``spec`` to ``path`` and start it (images must exist:
    no build, no pull). Services whose secret files changed (a rotated password) are
    recreated even when nothing else changed: compose does not see file contents, and each
    service reads its files only at start."""
    spec = adopt_existing(spec, log)
    changed = secrets_file.write_secret_files(spec, secrets, secrets_root)
    before = {name: _container_id(name) for name in changed}
    compose.write(spec, path, secrets_root)
    validate(spec, path)
    run(spec, ["up", "-d", "--no-build", "--remove-orphans"], path, log=log)
    # Recreated by that `up` (new config) or created now: they read the new files already.
    stale = [name for name, old in before.items() if old and _container_id(name) == old]
    if stale:
        log(f"secret files changed: recreating {', '.join(stale)}")
        args = ["up", "-d", "--no-build", "--no-deps", "--force-recreate", *stale]
        run(spec, args, path, log=log)
    return path


def existing_resources(
    spec: Stack,
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """The labels of the spec's networks and volumes that exist on the engine (name -> labels),
    networks first."""
    networks: dict[str, dict[str, str]] = {}
    volumes: dict[str, dict[str, str]] = {}
    with closing(docker_host.client()) as engine:
        for network in spec.networks:
            for found in engine.networks.list(names=[network.name]):
                if found.name == network.name:  # the filter also matches substrings
                    networks[network.name] = dict(found.attrs.get("Labels") or {})
        for volume in spec.volumes:
            try:
                attrs = engine.volumes.get(volume.name).attrs
            except NotFound:
                continue
            volumes[volume.name] = dict(attrs.get("Labels") or {})
    return networks, volumes


def adopt_existing(spec: Stack, log: Callable[[str], None] = lambda line: None) -> Stack:
    """``spec`` with the networks and volumes that exist but are not this project's (made by
    hand, or by another project) marked external: used as they are, never removed."""
    networks, volumes = existing_resources(spec)
    adopted = compose.adopt(spec, networks, volumes)
    for before, after in [
        *zip(spec.networks, adopted.networks, strict=True),
        *zip(spec.volumes, adopted.volumes, strict=True),
    ]:
        if after.external and not before.external:
            kind = "network" if before in spec.networks else "volume"
            log(f"adopting the existing {kind} {before.name} (not created by this stack): kept")
    return adopted


def _container_id(name: str) -> str | None:
    try:
        return str(docker_host.inspect(name)["Id"])
    except NotFound:
        return None


def down(
    spec: Stack,
    path: Path = RENDERED_PATH,
    remove_volumes: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> None:
    """Stop and remove the stack's containers (and its own volumes with ``remove_volumes``);
    external networks and volumes, and existing ones this project did not create (adopted),
    are never touched."""
    spec = adopt_existing(spec, log)
    compose.write(spec, path)
    args = ["down", "--remove-orphans", "--timeout", "20"]
    if remove_volumes:
        args.append("--volumes")
    run(spec, args, path, log=log)
