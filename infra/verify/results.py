"""A check's result, how one check runs without aborting the others, and the report table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

Check = tuple[str, Callable[[], str]]
"""A named check: its name (what the report prints) and the call that returns its detail."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


class CheckFailed(AssertionError):
    """A check's condition does not hold; the message says what was seen."""


def report(results: list[CheckResult], console: Console | None = None) -> int:
    """Print a table of results; 0 when all passed, 1 otherwise."""
    console = console or Console(soft_wrap=True)
    table = Table(title="container stack checks", show_lines=False)
    table.add_column("", width=2)
    table.add_column("check")
    table.add_column("detail", overflow="fold")
    for result in results:
        mark = "[green]✓[/green]" if result.ok else "[red]✗[/red]"
        table.add_row(mark, result.name, result.detail)
    console.print(table)
    failed = [result for result in results if not result.ok]
    if failed:
        console.print(f"[red]{len(failed)} of {len(results)} checks failed[/red]")
        return 1
    console.print(f"[green]all {len(results)} checks passed[/green]")
    return 0


def run_check(name: str, check: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(name, True, check())
    except CheckFailed as exc:
        return CheckResult(name, False, str(exc))
    except Exception as exc:  # a check must report, never abort the others
        return CheckResult(name, False, f"{type(exc).__name__}: {exc}".strip())
