"""Run the rendered compose file on the local engine with whichever compose CLI exists.

``docker compose`` (v2 plugin) is preferred; Debian bookworm only packages the v1 Python tool
``docker-compose`` 1.29, which reads the same file. Secret values reach the CLI through its
environment only (see :func:`infra.compose.secret_environment`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path

from infra import compose
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
    secrets: Mapping[str, str] | None,
    path: Path = RENDERED_PATH,
    timeout_s: float = 600,
    log: Callable[[str], None] = lambda line: None,
) -> str:
    """``<compose> -p <project> -f <path> <args>``; ``secrets=None`` passes placeholders
    (enough for commands such as ``down`` that do not create containers)."""
    command = compose_command()
    if command is None:
        raise ComposeError("no compose CLI: install docker-compose (apt) or the compose plugin")
    values = secrets if secrets is not None else _placeholders(spec)
    env = {**os.environ, **compose.secret_environment(spec, values)}
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


def validate(spec: Stack, secrets: Mapping[str, str] | None, path: Path = RENDERED_PATH) -> None:
    """``config -q``: the CLI accepts the rendered file."""
    run(spec, ["config", "-q"], secrets, path)


def up(
    spec: Stack,
    secrets: Mapping[str, str],
    path: Path = RENDERED_PATH,
    log: Callable[[str], None] = lambda line: None,
) -> Path:
    """Render ``spec`` to ``path`` and start it (images must exist: no build, no pull)."""
    compose.write(spec, path)
    validate(spec, secrets, path)
    run(spec, ["up", "-d", "--no-build", "--remove-orphans"], secrets, path, log=log)
    return path


def down(
    spec: Stack,
    path: Path = RENDERED_PATH,
    remove_volumes: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> None:
    """Stop and remove the stack's containers (and its own volumes with ``remove_volumes``);
    external networks and volumes are never touched."""
    compose.write(spec, path)
    args = ["down", "--remove-orphans", "--timeout", "20"]
    if remove_volumes:
        args.append("--volumes")
    run(spec, args, None, path, log=log)


def _placeholders(spec: Stack) -> dict[str, str]:
    return {secret.name: "unused" for secret in spec.secrets}
