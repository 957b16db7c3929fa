"""Operator tasks (invoke). Each task is a thin shell around library code in app_patch/,
infra/ and bench/; ``invoke --list`` shows them. Every task exits non-zero with one clear line
(or a check table) on failure.

The main job is ``invoke up`` (stack up, migrated, verified). Passwords for the container
stack come from ``MA_INFRA_<SECRET>`` variables (the list: ``infra.config.STACK_SECRETS``);
``invoke secrets`` writes random ones to ``.data/stack.env``, which every task reads, and the
files the containers read to ``.data/secrets/``.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from docker.errors import DockerException
from dotenv import load_dotenv
from invoke import Collection, Context, Exit, task
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from app_patch import migrate as migrations
from app_patch.db import redacted
from app_patch.errors import one_line_errors
from app_patch.settings import get_settings
from infra import in_stack, stack_ops, tasks_infra
from infra.docker_host import engine_address
from infra.engines import EngineKind
from infra.engines.base import DeployRequest
from infra.progress import RichProgress
from infra.secrets_file import STACK_ENV, ensure_stack_env
from infra.verify_containers import report

load_dotenv(STACK_ENV, override=False)
console = Console(soft_wrap=True)
PY = shlex.quote(sys.executable)


def _log(line: str) -> None:
    console.print(f"[dim]{line}[/dim]")


def _progress() -> RichProgress:
    return tasks_infra.progress()


@task
def secrets(c: Context) -> None:
    """Stack passwords to .data/stack.env (kept if set) and the containers' secret files.

    The files go under .data/secrets/<service>/ (0400, owned by the user that reads each)."""
    with one_line_errors(), tasks_infra.clear_errors():
        added = ensure_stack_env()
        load_dotenv(STACK_ENV, override=False)
        written = tasks_infra.write_secret_files()
    console.print(f"{'added ' + ', '.join(added) + ' to' if added else 'kept'} {STACK_ENV}")
    console.print(f"secret files in {written}")


@task(
    name="db-roles",
    help={
        "admin_url_file": "file holding a superuser's postgresql:// URL "
        "(default: the MA_INFRA_ADMIN_URL variable; never the URL itself)"
    },
)
def db_roles(c: Context, admin_url_file: str = "") -> None:
    """Create or update the database's owner and app roles, as a superuser (external mode).

    A DBA's one-off step for a database this stack does not manage (a managed `invoke up`
    does it itself). Safe to rerun: also how a rotated owner/app password reaches it."""
    with one_line_errors():
        config, admin = stack_ops.ensure_db_roles(admin_url_file or None)
    console.print(
        f"roles {config.postgres_owner_user} (owner) and {config.postgres_app_user} (app) "
        f"ready in {config.postgres_db}, as {admin}"
    )


@task(help={"revision": "target revision (default: head)"})
def migrate(c: Context, revision: str = "head") -> None:
    """Upgrade the schema as its owner: MA_DB_MIGRATION_URL, MA_DB_URL, or the recorded stack."""
    with _stack_errors():
        url = stack_ops.owner_database_url()
        report_ = migrations.upgrade(url, revision)
    before, after = report_.from_revision or "base", report_.to_revision or "base"
    change = f"migrated {before} -> {after}" if report_.changed else f"already at {after}"
    console.print(f"{change} on {redacted(url)}")


@task(name="db-status")
def db_status(c: Context) -> None:
    """Current revision, pending revisions and row counts per table."""
    with _stack_errors():
        url = stack_ops.owner_database_url()  # read-only: starts no server
        state = migrations.status(url)
    console.print(f"database: {redacted(url)}")
    console.print(f"current revision: {state.current or 'base'}   head: {state.head}")
    console.print(f"pending: {', '.join(state.pending) if state.pending else 'none'}")
    table = Table("table", "rows")
    for name, count in state.row_counts.items():
        table.add_row(name, "missing" if count is None else str(count))
    console.print(table)


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
    if monitoring:  # the setting MA_INFRA_MONITORING / monitoring, for this up and its record
        os.environ["MA_INFRA_MONITORING"] = "true"
    with _stack_errors():
        with _progress().live() as shown:
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


@task(
    help={
        "volumes": "also delete the stack's volumes (its data): names them, asks on a terminal",
        "yes": "with --volumes: delete without asking (needed when there is no terminal)",
    }
)
def down(c: Context, volumes: bool = False, yes: bool = False) -> None:
    """Stop what `up` started; data is kept unless --volumes (confirmed, or --yes)."""
    with _stack_errors():
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
        with _progress().live() as shown:
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


@task(
    help={
        "no_build": "roll out the API image already built",
        "timeout": "seconds a new replica gets to become healthy (default: deployTimeoutS)",
        "drain": "seconds an old replica gets to finish its requests (default: drainTimeoutS)",
    }
)
def deploy(c: Context, no_build: bool = False, timeout: int = 0, drain: int = 0) -> None:
    """Roll the API onto a new image behind the proxy, one replica at a time, dropping no
    request; a new image that never gets healthy is removed and the old one keeps serving."""
    request = DeployRequest(build=not no_build, deploy_timeout_s=timeout, drain_timeout_s=drain)
    with _stack_errors(), _progress().live() as shown:
        migration = stack_ops.deploy(request, shown)
    console.print(f"[green]deployed[/green]; schema at {migration.to_revision}")


@task(help={"engine": "pulumi, compose or embedded (default: the one `up` would choose)"})
def preview(c: Context, engine: str = "") -> None:
    """What `up` would change (pulumi: `pulumi preview --diff`); changes nothing."""
    with _stack_errors(), _progress().live() as shown:
        kind, plan = stack_ops.preview(engine=engine or None, progress=shown)
    if kind is not EngineKind.PULUMI:  # pulumi's own output was streamed already
        console.print(escape(plan))


@task
def verify(c: Context) -> None:
    """Smoke checks plus testinfra checks of the running stack; non-zero exit on failure."""
    with _stack_errors():
        endpoints = stack_ops.recorded_endpoints()  # read-only: starts nothing
    _verify_or_exit(endpoints)


def _verify_or_exit(endpoints: stack_ops.StackEndpoints) -> None:
    with _stack_errors():
        results = stack_ops.verify(endpoints)
    code = report(results, console)
    if code:
        raise Exit(code=code)


@contextmanager
def _stack_errors() -> Iterator[None]:
    """``up``/``verify``: every expected failure as one ``error:`` line, exit code 1 (the
    Docker SDK's own errors too, e.g. the engine going away mid-way)."""
    with one_line_errors(), tasks_infra.clear_errors():
        try:
            yield
        except DockerException as exc:
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise Exit(f"error: Docker engine at {engine_address()}: {detail}", code=1) from None


@task(help={"host": "bind address (MA_API_HOST)", "port": "port (MA_API_PORT)"})
def serve(c: Context, host: str = "", port: int = 0) -> None:
    """Serve the API in the foreground with uvicorn (Ctrl-C stops it)."""
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


ns = Collection(
    secrets, db_roles, migrate, db_status, up, preview, deploy, down, verify, serve, test, bench
)
for infra_task in tasks_infra.TASKS:
    ns.add_task(infra_task)


@task(
    help={
        "dry_run": "report what would be deleted; change nothing on disk or in the database",
        "policy": "only these, comma-separated: uploads,artifacts,quota,missing,orphans,tmp",
    }
)
def retention(c: Context, dry_run: bool = False, policy: str = "") -> None:
    """Apply retention: expired uploads/artifacts, quota, missing files, orphans, tmp; audited.

    Runs where the files are: in the API container of a compose/Pulumi stack, else here."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

    from app_patch import retention as sweep

    code = 0
    with _stack_errors():
        policies = sweep.parse_policies(policy)
        target = stack_ops.file_store_target()
        columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            bars: dict[str, TaskID] = {}

            def on_progress(name: str, done: int, total: int | None) -> None:
                if name not in bars:
                    bars[name] = bar.add_task(name, total=total)
                bar.update(bars[name], completed=done, total=total)

            report: sweep.SweepReport | in_stack.RetentionReport
            if isinstance(target, in_stack.ContainerTarget):
                report, code = in_stack.retention_in_container(
                    target,
                    dry_run=dry_run,
                    policies=[p.value for p in policies] if policy.strip() else [],
                    on_progress=on_progress,
                    on_output=lambda line: _log(escape(line)),
                )
            else:
                report = sweep.sweep_configured(
                    get_settings(),
                    stack_ops.app_database_url(),
                    dry_run=dry_run,
                    policies=policies,
                    on_progress=on_progress,
                )
    title = "retention (dry run: would delete)" if dry_run else "retention: deleted"
    if isinstance(target, in_stack.ContainerTarget):
        title += f" (in {target.container})"
    table = Table("policy", "objects", "bytes", title=title)
    for name, objects, nbytes in report.summary_rows():
        table.add_row(name, str(objects), f"{nbytes:,}")
    console.print(table)
    if report.error_count:
        console.print(f"[yellow]{report.error_count} problem(s); first ones:[/yellow]")
        for line in report.errors:
            console.print(f"  {escape(line)}")
    if report.error_count or code:
        raise Exit(code=1)


ns.add_task(retention)


@task(help={"retry": "move this failed entry (job id or file name) back to pending"})
def outbox(c: Context, retry: str = "") -> None:
    """List the outbox's pending and failed entries (where the files are, like retention)."""
    with _stack_errors():
        target = stack_ops.file_store_target()
        if retry:
            for line in in_stack.outbox_retry(target, retry):
                console.print(escape(line))
        listing = in_stack.outbox_list(target)
    where = f" in {target.container}" if isinstance(target, in_stack.ContainerTarget) else ""
    if not listing.pending and not listing.failed:
        console.print(f"outbox{where}: empty")
        return
    entry_column = Column("entry", no_wrap=True, min_width=36)  # ids are what --retry takes
    table = Table("state", entry_column, "age", "idempotency key / error", title=f"outbox{where}")
    for entry in listing.pending:
        table.add_row(
            "pending",
            escape(str(entry.get("job_id", ""))),
            _age(entry.get("age_s")),
            escape(str(entry.get("idempotency_key") or "")),
        )
    for entry in listing.failed:
        name = escape(str(entry.get("job_id") or entry.get("file") or ""))
        error = escape(str(entry.get("error") or ""))
        table.add_row("[red]failed[/red]", name, _age(entry.get("age_s")), error)
    console.print(table)
    console.print(f"{len(listing.pending)} pending, {len(listing.failed)} failed")


ns.add_task(outbox)


class _BackupBars:
    """Rich progress bars for backup and restore: one bar per phase (bytes), steps as lines."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.bars: dict[str, Any] = {}

    def step(self, text: str) -> None:
        self.bar.console.print(f"[dim]{escape(text)}[/dim]")

    def advance(self, phase: str, done: int, total: int | None) -> None:
        if phase not in self.bars:
            self.bars[phase] = self.bar.add_task(phase, total=total)
        self.bar.update(self.bars[phase], completed=done, total=total)


@contextmanager
def _backup_bars() -> Iterator[_BackupBars]:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        yield _BackupBars(bar)


@task(
    help={
        "to": "where backup sets are kept (default .data/backups/)",
        "list_": "list the complete sets there (time, revision, rows, files, bytes); no backup",
        "keep": "after a successful backup, delete all but the newest N sets (and stale "
        "partial ones), naming each",
    }
)
def backup(c: Context, to: str = "", list_: bool = False, keep: int = 0) -> None:
    """Back up the stack: pg_dump (custom format) + every live stored file + a sha256 manifest.

    The stack's secrets (.data/stack.env, the Pulumi config) are not in it: keep them apart."""
    from pathlib import Path

    from infra import backup as backups

    directory = Path(to) if to else backups.DEFAULT_DIR
    if list_:
        _list_backups(directory)
        return
    with _stack_errors(), _backup_bars() as bars:
        result = backups.take_backup(directory, bars, keep=keep or None)
    manifest = result.manifest
    console.print(
        f"[green]backup[/green] {result.path}: revision {manifest.schema_revision}, "
        f"{sum(manifest.rows.values())} rows, {len(manifest.files)} files, "
        f"{manifest.file_bytes + manifest.dump_size:,} bytes in {result.seconds:.1f} s"
    )
    if manifest.missing:
        console.print(
            f"[yellow]{len(manifest.missing)} file(s) were deleted while the backup ran; "
            "restore marks their rows deleted[/yellow]"
        )
    for path in result.pruned:
        console.print(f"deleted {path}")


def _list_backups(directory: Any) -> None:
    from infra import backup as backups

    found = backups.list_sets(directory)
    if not found:
        console.print(f"no backup sets in {directory}")
        return
    table = Table("set", "time (UTC)", "revision", "rows", "files", "bytes", title=str(directory))
    for info in found:
        m = info.manifest
        table.add_row(
            info.name,
            m.created_at,
            str(m.schema_revision),
            str(sum(m.rows.values())),
            str(len(m.files)),
            f"{m.file_bytes + m.dump_size:,}",
        )
    console.print(table)


@task(
    help={
        "from_": "where backup sets are kept, for a set given by name (default .data/backups/)",
        "force": "restore into a stack that already holds jobs or stored files (replaces its "
        "database; its other files stay, for retention's orphan policy)",
    }
)
def restore(c: Context, backup: str, from_: str = "", force: bool = False) -> None:
    """Restore a backup set (a path, or a name under --from) into the recorded stack.

    Verifies every byte against the manifest before anything changes; refuses a non-empty
    target unless --force; migrates a set older than head."""
    from pathlib import Path

    from infra import backup as backups

    directory = Path(from_) if from_ else backups.DEFAULT_DIR
    with _stack_errors(), _backup_bars() as bars:
        result = backups.restore_backup(backup, directory, bars, force=force)
    manifest = result.manifest
    console.print(
        f"[green]restored[/green] {result.set_path.name}: {sum(manifest.rows.values())} rows, "
        f"{len(manifest.files)} files, revision {result.migrated_to}, store {result.store_id} "
        f"in {result.seconds:.1f} s"
    )


ns.add_task(backup)
ns.add_task(restore)


def _age(seconds: object) -> str:
    """Ages as the outbox module reports them (seconds, or null when unknown)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return ""
    return f"{seconds:.0f} s" if seconds < 3600 else f"{seconds / 3600:.1f} h"
