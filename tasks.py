"""Operator tasks (invoke). Each task is a thin shell around library code in app_patch/ and infra/.

Run ``invoke --list`` for the list; every task exits non-zero with one clear line on failure.
"""

from __future__ import annotations

import shlex
import sys

from invoke import Context, task
from rich.console import Console
from rich.table import Table

from app_patch import migrate as migrations
from app_patch.bootstrap import database_url
from app_patch.db import redacted
from app_patch.errors import one_line_errors
from app_patch.settings import get_settings

console = Console(soft_wrap=True)
PY = shlex.quote(sys.executable)


@task(help={"revision": "target revision (default: head)"})
def migrate(c: Context, revision: str = "head") -> None:
    """Upgrade the database schema (safe to run from several hosts at once)."""
    with one_line_errors():
        url = database_url(get_settings())
        report = migrations.upgrade(url, revision)
    before, after = report.from_revision or "base", report.to_revision or "base"
    change = f"migrated {before} -> {after}" if report.changed else f"already at {after}"
    console.print(f"{change} on {redacted(url)}")


@task(name="db-status")
def db_status(c: Context) -> None:
    """Current revision, pending revisions and row counts per table."""
    with one_line_errors():
        url = database_url(get_settings())
        state = migrations.status(url)
    console.print(f"database: {redacted(url)}")
    console.print(f"current revision: {state.current or 'base'}   head: {state.head}")
    console.print(f"pending: {', '.join(state.pending) if state.pending else 'none'}")
    table = Table("table", "rows")
    for name, count in state.row_counts.items():
        table.add_row(name, "missing" if count is None else str(count))
    console.print(table)


@task(help={"k": "only tests matching this expression", "quick": "skip lint and type checks"})
def test(c: Context, k: str = "", quick: bool = False) -> None:
    """Lint, type-check and run the whole test suite (real PostgreSQL, Redis, Docker)."""
    if not quick:
        c.run(f"{PY} -m ruff check .")
        c.run(f"{PY} -m mypy")
    selector = f" -k {k!r}" if k else ""
    c.run(f"{PY} -m pytest{selector}")
