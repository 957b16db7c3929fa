"""Developer and set-up tasks: secrets, serve, test, bench."""

from __future__ import annotations

import shlex

from invoke import Context, Exit, task

from tasks._shared import PY, console, task_errors


@task
def secrets(c: Context) -> None:
    """Stack passwords to .data/stack.env (kept if set) and the containers' secret files.

    The files go under .data/secrets/<service>/ (0400, owned by the user that reads each)."""
    import os

    from dotenv import load_dotenv

    from infra import secrets_file
    from infra.config import config_from_env, secrets_from_env
    from infra.secrets_file import STACK_ENV, ensure_stack_env
    from infra.stack import build_stack

    with task_errors():
        added = ensure_stack_env()
        load_dotenv(STACK_ENV, override=False)
        spec = build_stack(config_from_env(os.environ))
        secrets_file.write_secret_files(spec, secrets_from_env(os.environ, spec.secrets))
        written = secrets_file.SECRETS_ROOT
    console.print(f"{'added ' + ', '.join(added) + ' to' if added else 'kept'} {STACK_ENV}")
    console.print(f"secret files in {written}")


@task(help={"host": "bind address (MA_API_HOST)", "port": "port (MA_API_PORT)"})
def serve(c: Context, host: str = "", port: int = 0) -> None:
    """Serve the API in the foreground with uvicorn (Ctrl-C stops it)."""
    from app_patch.settings import get_settings

    api = get_settings().api
    bind = shlex.quote(host or api.host)
    c.run(f"{PY} -m uvicorn api.main:app --host {bind} --port {port or api.port}", pty=False)


@task(
    help={
        "k": "only tests matching this expression",
        "quick": "skip lint and type checks",
        "no_docker": "leave out the tests that need a Docker engine (CI always runs them)",
    }
)
def test(c: Context, k: str = "", quick: bool = False, no_docker: bool = False) -> None:
    """Lint, type-check and run the whole test suite (real PostgreSQL, Redis, Docker)."""
    if not quick:
        c.run(f"{PY} -m ruff check .")
        c.run(f"{PY} -m ruff format --check .")
        c.run(f"{PY} -m mypy")
    selector = f" -k {shlex.quote(k)}" if k else ""
    if no_docker:
        selector += " -m 'not docker'"
    c.run(f"{PY} -m pytest{selector}")


@task(
    help={
        "quick": "small sizes, under 2 minutes (what CI runs)",
        "only": "comma-separated subset of the benchmarks",
        "out": "output directory (default bench/; CI writes elsewhere)",
    }
)
def bench(c: Context, quick: bool = False, only: str = "", out: str = "") -> None:
    """Benchmarks against the physical limits measured in the same run -> bench/results.md."""
    from pathlib import Path

    from bench.run import BenchmarkFailed, main

    try:
        main(
            quick=quick,
            only=[name.strip() for name in only.split(",") if name.strip()] or None,
            out_dir=Path(out) if out else None,
        )
    except BenchmarkFailed as exc:
        raise Exit(f"error: benchmark failed: {exc}", code=1) from None
    except ValueError as exc:  # an unknown --only name
        raise Exit(f"error: {exc}", code=1) from None
