"""Tasks on the container images and files: compose, images, seed-base-image,
verify-containers."""

from __future__ import annotations

import os

from invoke import Context, Exit, task

from tasks._shared import console, progress, task_errors


@task(name="compose", help={"path": "where to write it (default infra/rendered/compose.yml)"})
def compose_file(c: Context, path: str = "") -> None:
    """Render the stack (MA_INFRA_* settings) to a compose file."""
    from pathlib import Path

    from infra import compose
    from infra.config import config_from_env
    from infra.stack import build_stack

    with task_errors():
        spec = build_stack(config_from_env(os.environ))
        written = compose.write(spec, Path(path) if path else compose.DEFAULT_PATH)
    console.print(f"wrote {written}")


@task
def seed_base_image(c: Context) -> None:
    """Provide debian:bookworm-slim: pull it, or debootstrap and import it (~25 s)."""
    from infra import images
    from infra.config import config_from_env
    from infra.docker_host import require_engine

    with task_errors():
        require_engine()
        config = config_from_env(os.environ)
        with progress().live() as shown:
            how = images.seed_base_image(config.base_image, progress=shown)
    console.print(f"{config.base_image}: {how}")


@task(name="images")
def build_images(c: Context) -> None:
    """Build the local images (API, proxy; PostgreSQL/Redis when buildLocalImages)."""
    from infra import images
    from infra.config import config_from_env
    from infra.docker_host import require_engine
    from infra.stack import build_stack

    with task_errors():
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
    from infra import verify as checks
    from infra.engines.record import config_or_env

    with task_errors():
        code = checks.report(checks.run_checks(config_or_env()), console)
    if code:
        raise Exit(code=code)
