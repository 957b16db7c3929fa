"""The compose project on the local Docker engine: the compose CLI, the rendered file, the
adoption of existing networks and volumes, and starting and stopping the project."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from contextlib import closing
from functools import cache
from pathlib import Path

from docker.errors import NotFound

from infra import compose, docker_host, secrets_file
from infra.engines import record
from infra.engines.base import DownPlan
from infra.engines.cli import stream_cli
from infra.engines.kinds import EngineError, EngineKind
from infra.progress import Progress, Quiet
from infra.spec import Stack


class ComposeError(EngineError):
    """The compose CLI is missing or a compose command failed."""


@cache
def compose_command() -> tuple[str, ...] | None:
    """The compose CLI to use: v2 (``docker compose``) when it works, else v1
    (``docker-compose``), else None."""
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


def rendered_path() -> Path:
    """Where ``up`` renders the file it runs: beside the stack's record, so a test stack or a
    second checkout never rewrites this checkout's file."""
    return record.state_dir() / "compose.yml"


def run(
    spec: Stack,
    args: list[str],
    path: Path,
    progress: Progress | None = None,
    timeout_s: float = 600,
) -> str:
    """``<compose> -p <project> -f <path> <args>``, its output streamed to ``progress``."""
    command = compose_command()
    if command is None:
        raise ComposeError("no compose CLI: install docker-compose (apt) or the compose plugin")
    return stream_cli(
        [*command, "-p", spec.project, "-f", str(path), *args],
        progress or Quiet(),
        shown=" ".join([*command, *args]),
        error=ComposeError,
        failed=lambda exc: f"compose {args[0]} failed ({exc.code}): {exc.last_line}",
        timeout_s=timeout_s,
    )


def validate(spec: Stack, path: Path) -> None:
    """``config -q``: the CLI accepts the rendered file."""
    run(spec, ["config", "-q"], path)


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


def adopt_existing(spec: Stack, progress: Progress | None = None) -> Stack:
    """``spec`` with the networks and volumes that exist but are not this project's (made by
    hand, or by another project) marked external: used as they are, never removed."""
    networks, volumes = existing_resources(spec)
    adopted = compose.adopt(spec, networks, volumes)
    newly = [
        ("network", b.name)
        for b, a in zip(spec.networks, adopted.networks, strict=True)
        if a.external and not b.external
    ] + [
        ("volume", b.name)
        for b, a in zip(spec.volumes, adopted.volumes, strict=True)
        if a.external and not b.external
    ]
    for kind, name in newly:
        if progress is not None:
            progress.step(f"adopting the existing {kind} {name} (not this stack's): kept")
    return adopted


def _container_id(name: str) -> str | None:
    try:
        return str(docker_host.inspect(name)["Id"])
    except NotFound:
        return None


def start(
    spec: Stack,
    secrets: Mapping[str, str],
    path: Path,
    progress: Progress | None = None,
    secrets_root: Path | None = None,
) -> Path:
    """Write the secret files, render ``spec`` to ``path`` and start it (images must exist:
    no build, no pull). Services whose secret files changed (a rotated password) are
    recreated even when nothing else changed: compose does not see file contents, and each
    service reads its files only at start."""
    spec = adopt_existing(spec, progress)
    changed = secrets_file.write_secret_files(spec, secrets, secrets_root)
    before = {name: _container_id(name) for name in changed}
    compose.write(spec, path, secrets_root)
    validate(spec, path)
    run(spec, ["up", "-d", "--no-build", "--remove-orphans"], path, progress)
    # Recreated by that `up` (new config) or created now: they read the new files already.
    stale = [name for name, old in before.items() if old and _container_id(name) == old]
    if stale:
        if progress is not None:
            progress.step(f"secret files changed: recreating {', '.join(stale)}")
        args = ["up", "-d", "--no-build", "--no-deps", "--force-recreate", *stale]
        run(spec, args, path, progress)
    return path


def stop(
    spec: Stack, path: Path, remove_volumes: bool = False, progress: Progress | None = None
) -> None:
    """Stop and remove the spec's containers (and its own volumes with ``remove_volumes``);
    external networks and volumes, and existing ones this project did not create (adopted),
    are never touched. No ownership check: callers prove ownership first."""
    spec = adopt_existing(spec, progress)
    compose.write(spec, path)
    args = ["down", "--remove-orphans", "--timeout", "20"]
    if remove_volumes:
        args.append("--volumes")
    run(spec, args, path, progress)


def volume_plan(spec: Stack, kind: EngineKind) -> DownPlan:
    """The stack's volumes that exist, split into deletable (its own) and kept (adopted)."""
    _, existing = existing_resources(spec)
    adopted = compose.adopt(spec, {}, existing)
    present = [volume for volume in adopted.volumes if volume.name in existing]
    return DownPlan(
        kind,
        tuple(v.name for v in present if not v.external),
        tuple(v.name for v in present if v.external),
        tuple(s.name for s in spec.services),
    )
