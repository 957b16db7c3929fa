"""Tasks over the stack's engines: up, preview, deploy, down, verify."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from invoke import Context, Exit, task
from rich.markup import escape

from tasks._shared import console, progress, task_errors

if TYPE_CHECKING:
    from infra.engines import StackEndpoints


@task(
    help={
        "engine": "pulumi, compose or embedded (default: the first this machine has)",
        "no_build": "reuse the images already built",
        "no_verify": "skip the checks after migrating",
        "port": "the embedded engine's local API port (default MA_API_PORT)",
        "monitoring": "add Prometheus (scraping the API, with the alert rules) to the stack",
    }
)
def up(
    c: Context,
    engine: str = "",
    no_build: bool = False,
    no_verify: bool = False,
    port: int = 0,
    monitoring: bool = False,
) -> None:
    """The main job: start the stack, migrate it to head, verify it."""
    from infra import stack_ops

    if monitoring:  # the setting MA_INFRA_MONITORING / monitoring, for this up and its record
        os.environ["MA_INFRA_MONITORING"] = "true"
    with task_errors():
        with progress().live() as shown:
            endpoints = stack_ops.up(
                engine=engine or None, build=not no_build, progress=shown, port=port
            )
        console.print(f"[green]up[/green] with the {endpoints.engine} engine")
        migration = stack_ops.migrate(endpoints)
        console.print(f"schema: {migration.from_revision or 'base'} -> {migration.to_revision}")
        stack_ops.wait_api_ready(endpoints)
    if endpoints.api_url:
        console.print(f"API: {endpoints.api_url}")
        if endpoints.engine != "embedded":  # container engines protect the API with a key
            console.print(
                "API key (every route but /health/*): send it as X-API-Key, e.g.\n"
                "  curl -H \"X-API-Key: $(sed -n 's/^MA_INFRA_API_KEY=//p' .data/stack.env)\" "
                f"{endpoints.api_url}/analyses"
            )
    if not no_verify:
        _verify_or_exit(endpoints)


@task(help={"engine": "pulumi, compose or embedded (default: the one `up` would choose)"})
def preview(c: Context, engine: str = "") -> None:
    """What `up` would change (pulumi: `pulumi preview --diff`); changes nothing."""
    from infra import stack_ops
    from infra.engines import EngineKind

    with task_errors(), progress().live() as shown:
        kind, plan = stack_ops.preview(engine=engine or None, progress=shown)
    if kind is not EngineKind.PULUMI:  # pulumi's own output was streamed already
        console.print(escape(plan))


@task(
    help={
        "no_build": "roll out the API image already built",
        "timeout": "seconds a new replica gets to become healthy (default: deployTimeoutS)",
        "drain": "seconds an old replica gets to finish its requests (default: drainTimeoutS)",
    }
)
def deploy(c: Context, no_build: bool = False, timeout: int = 0, drain: int = 0) -> None:
    """Roll the API onto a new image, one replica at a time, dropping no request.

    Behind the proxy: a new image that never gets healthy is removed and the old one keeps
    serving."""
    from infra import stack_ops
    from infra.engines.base import DeployRequest

    request = DeployRequest(build=not no_build, deploy_timeout_s=timeout, drain_timeout_s=drain)
    with task_errors(), progress().live() as shown:
        migration = stack_ops.deploy(request, shown)
    console.print(f"[green]deployed[/green]; schema at {migration.to_revision}")


@task(
    help={
        "volumes": "also delete the stack's volumes (its data): names them, asks on a terminal",
        "yes": "with --volumes: delete without asking (needed when there is no terminal)",
    }
)
def down(c: Context, volumes: bool = False, yes: bool = False) -> None:
    """Stop what `up` started; data is kept unless --volumes (confirmed, or --yes)."""
    from infra import stack_ops
    from infra.engines import EngineKind

    with task_errors():
        engine, found, plan = stack_ops.down_plan()  # changes nothing; refuses foreign stacks
        delete = volumes and bool(plan.deletable)
        if delete:
            what = f"will delete volumes {', '.join(plan.deletable)} (all the history and files)"
            if not yes:
                if not sys.stdin.isatty():
                    raise Exit(
                        f"error: {what}: no terminal to confirm on, nothing deleted; "
                        "rerun with --yes to delete them",
                        code=1,
                    )
                console.print(f"[yellow]{what}[/yellow]")
                answer = console.input("type [bold]yes[/bold] to delete them: ")
                if answer.strip().lower() != "yes":
                    raise Exit("error: not confirmed: nothing stopped or deleted", code=1)
            else:
                console.print(what)
        with progress().live() as shown:
            stack_ops.down(engine, found, volumes=delete, progress=shown)
    kind = engine.kind
    console.print(f"[green]down[/green] ({kind})")
    if delete:
        console.print(f"deleted volumes {', '.join(plan.deletable)}")
    elif volumes and kind is EngineKind.EMBEDDED:
        console.print("the embedded engine has no volumes: nothing deleted")
    kept = [name for name in (*plan.deletable, *plan.kept) if not delete or name in plan.kept]
    if kept:
        console.print(f"volumes kept: {', '.join(kept)}")
    elif not volumes and kind is EngineKind.EMBEDDED:
        console.print("data kept")


@task
def verify(c: Context) -> None:
    """Smoke checks plus testinfra checks of the running stack; non-zero exit on failure."""
    from infra import stack_ops

    with task_errors():
        endpoints = stack_ops.recorded_endpoints()  # read-only: starts nothing
    _verify_or_exit(endpoints)


def _verify_or_exit(endpoints: StackEndpoints) -> None:
    from infra import stack_ops
    from infra.verify import report

    with task_errors():
        results = stack_ops.verify(endpoints)
    code = report(results, console)
    if code:
        raise Exit(code=code)
