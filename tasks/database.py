"""Tasks on the database: migrate, db-status, db-roles."""

from __future__ import annotations

from invoke import Context, task
from rich.table import Table

from tasks._shared import console, task_errors


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
    from infra import stack_ops

    with task_errors():
        config, admin = stack_ops.ensure_db_roles(admin_url_file or None)
    console.print(
        f"roles {config.postgres_owner_user} (owner) and {config.postgres_app_user} (app) "
        f"ready in {config.postgres_db}, as {admin}"
    )


@task(help={"revision": "target revision (default: head)"})
def migrate(c: Context, revision: str = "head") -> None:
    """Upgrade the schema as its owner: MA_DB_MIGRATION_URL, MA_DB_URL, or the recorded stack."""
    from app_patch import migrate as migrations
    from app_patch.db import redacted
    from infra import stack_ops

    with task_errors():
        url = stack_ops.owner_database_url()
        report = migrations.upgrade(url, revision)
    before, after = report.from_revision or "base", report.to_revision or "base"
    change = f"migrated {before} -> {after}" if report.changed else f"already at {after}"
    console.print(f"{change} on {redacted(url)}")


@task(name="db-status")
def db_status(c: Context) -> None:
    """Current revision, pending revisions and row counts per table."""
    from app_patch import migrate as migrations
    from app_patch.db import redacted
    from infra import stack_ops

    with task_errors():
        url = stack_ops.owner_database_url()  # read-only: starts no server
        state = migrations.status(url)
    console.print(f"database: {redacted(url)}")
    console.print(f"current revision: {state.current or 'base'}   head: {state.head}")
    console.print(f"pending: {', '.join(state.pending) if state.pending else 'none'}")
    table = Table("table", "rows")
    for name, count in state.row_counts.items():
        table.add_row(name, "missing" if count is None else str(count))
    console.print(table)
