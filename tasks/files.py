"""Tasks on the stored files and the whole history: retention, outbox, backup, restore.

Each runs where the files are: inside the API container of a compose/Pulumi stack, else here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from invoke import Context, Exit, task
from rich.markup import escape
from rich.table import Column, Table

from tasks._shared import console, log, task_errors


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
    from app_patch.settings import get_settings
    from infra import in_stack, stack_ops

    code = 0
    with task_errors():
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
                    on_output=lambda line: log(escape(line)),
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


@task(help={"retry": "move this failed entry (job id or file name) back to pending"})
def outbox(c: Context, retry: str = "") -> None:
    """List the outbox's pending and failed entries (where the files are, like retention)."""
    from infra import in_stack, stack_ops

    with task_errors():
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


def _age(seconds: object) -> str:
    """Ages as the outbox module reports them (seconds, or null when unknown)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return ""
    return f"{seconds:.0f} s" if seconds < 3600 else f"{seconds / 3600:.1f} h"


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
    with task_errors(), _backup_bars() as bars:
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
    with task_errors(), _backup_bars() as bars:
        result = backups.restore_backup(backup, directory, bars, force=force)
    manifest = result.manifest
    console.print(
        f"[green]restored[/green] {result.set_path.name}: {sum(manifest.rows.values())} rows, "
        f"{len(manifest.files)} files, revision {result.migrated_to}, store {result.store_id} "
        f"in {result.seconds:.1f} s"
    )
