"""Invoke tasks for the container stack; ``tasks.py`` adds them to its collection.

Names as invoke shows them: ``compose``, ``images``, ``seed-base-image``, ``up``, ``down``,
``verify-containers``. Each is a thin shell around library code and exits non-zero with one
clear line (or the rich check table) on failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from invoke import Context, Exit, task
from rich.console import Console

from infra import compose, images, secrets_file
from infra import engine as stack_engine
from infra import verify_containers as checks
from infra.compose_engine import ComposeError
from infra.config import ConfigError, config_from_env, secrets_from_env
from infra.docker_host import DockerUnavailable, ensure_dockerd
from infra.images import ImageBuildError
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
        ComposeError,
        stack_engine.EngineError,
        TimeoutError,
    ) as exc:
        raise Exit(f"error: {exc}", code=1) from None


def _log(line: str) -> None:
    console.print(f"[dim]{line}[/dim]")


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
        ensure_dockerd()
        config = config_from_env(os.environ)
        how = images.seed_base_image(config.base_image, log=_log)
    console.print(f"{config.base_image}: {how}")


@task(name="images")
def build_images(c: Context) -> None:
    """Build the local images (API; PostgreSQL/Redis when buildLocalImages)."""
    with clear_errors():
        ensure_dockerd()
        config = config_from_env(os.environ)
        images.seed_base_image(config.base_image, log=_log)
        built = images.build_all(build_stack(config), log=_log)
    for image in built:
        console.print(f"{image.tag}: {image.seconds:.1f}s")


@task(
    help={
        "engine": "pulumi, compose or embedded (default: the first that fits)",
        "no_build": "use existing images",
        "no_migrate": "skip alembic upgrade head (run from here as the schema owner)",
    }
)
def up(c: Context, engine: str = "", no_build: bool = False, no_migrate: bool = False) -> None:
    """Start the stack from the MA_INFRA_* settings (passwords: MA_INFRA_*_PASSWORD)."""
    with clear_errors():
        endpoints = stack_engine.up(
            engine=engine or None, build=not no_build, migrate=not no_migrate, log=_log
        )
    console.print(f"[green]up[/green] with {endpoints.engine}")
    if endpoints.api_url:
        console.print(f"API: {endpoints.api_url}")


@task(help={"volumes": "also delete the stack's own volumes (its data)"})
def down(c: Context, volumes: bool = False) -> None:
    """Stop what `up` started; data volumes are kept unless --volumes."""
    with clear_errors():
        kind = stack_engine.down(remove_volumes=volumes, log=_log)
    console.print(f"[green]down[/green] ({kind})")


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


TASKS = (compose_file, build_images, seed_base_image, up, down, verify_containers)
