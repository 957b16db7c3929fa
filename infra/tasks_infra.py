"""Invoke tasks for the container stack; ``tasks.py`` adds them to its collection.

Names as invoke shows them: ``compose``, ``images``, ``seed-base-image``,
``verify-containers`` (``up``, ``down``, ``preview`` and ``verify`` are in ``tasks.py``, over
:mod:`infra.engines`). Each is a thin shell around library code and exits non-zero with one
clear line (or the rich check table) on failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from invoke import Context, Exit, task
from rich.console import Console

from infra import compose, images, secrets_file
from infra import verify_containers as checks
from infra.config import ConfigError, config_from_env, secrets_from_env
from infra.docker_host import DockerUnavailable, require_engine
from infra.images import ImageBuildError
from infra.progress import RichProgress
from infra.stack import build_stack

console = Console(soft_wrap=True)


@contextmanager
def clear_errors() -> Iterator[None]:
    try:
        yield
    except (
        ConfigError,
        DockerUnavailable,
        ImageBuildError,
        TimeoutError,
    ) as exc:
        raise Exit(f"error: {exc}", code=1) from None


def progress() -> RichProgress:
    """How every task shows long operations: steps, and the running one's latest line."""
    return RichProgress(console)


@task(name="compose", help={"path": "where to write it (default infra/rendered/compose.yml)"})
def compose_file(c: Context, path: str = "") -> None:
    """Render the stack (MA_INFRA_* settings) to a compose file."""
    with clear_errors():
        spec = build_stack(config_from_env(os.environ))
        written = compose.write(spec, Path(path) if path else compose.DEFAULT_PATH)
    console.print(f"wrote {written}")


@task
def seed_base_image(c: Context) -> None:
    """Provide debian:bookworm-slim: pull it, or debootstrap and import it (~25 s)."""
    with clear_errors():
        require_engine()
        config = config_from_env(os.environ)
        with progress().live() as shown:
            how = images.seed_base_image(config.base_image, progress=shown)
    console.print(f"{config.base_image}: {how}")


@task(name="images")
def build_images(c: Context) -> None:
    """Build the local images (API; PostgreSQL/Redis when buildLocalImages)."""
    with clear_errors():
        require_engine()
        config = config_from_env(os.environ)
        with progress().live() as shown:
            images.seed_base_image(config.base_image, progress=shown)
            built = images.build_all(build_stack(config), progress=shown)
    for image in built:
        console.print(f"{image.tag}: {image.seconds:.1f}s")


@task
def verify_containers(c: Context) -> None:
    """testinfra checks of the running containers; non-zero exit when any fails."""
    with clear_errors():
        code = verify_containers_report()
    if code:
        raise Exit(code=code)


def verify_containers_report() -> int:
    return checks.report(checks.run_checks(), console)


def write_secret_files() -> Path:
    """Write the compose secret files for the ``MA_INFRA_*`` config and passwords."""
    config = config_from_env(os.environ)
    spec = build_stack(config)
    secrets_file.write_secret_files(spec, secrets_from_env(os.environ, spec.secrets))
    return secrets_file.SECRETS_ROOT


TASKS: tuple[Any, ...] = (compose_file, build_images, seed_base_image, verify_containers)
