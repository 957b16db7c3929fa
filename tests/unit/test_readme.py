"""The README stays true: its settings table is the one the code generates, and every task
it names exists."""

from __future__ import annotations

import re

from invoke import Collection

from app_patch.settings import PROJECT_ROOT
from scripts.settings_table import markdown

README = (PROJECT_ROOT / "README.md").read_text()


def test_settings_table_matches_the_code() -> None:
    block = re.search(
        r"<!-- settings-table:start.*?-->\n(.*?)\n<!-- settings-table:end -->", README, re.S
    )
    assert block is not None
    assert block.group(1).strip() == markdown().strip(), "run: python -m scripts.settings_table"


def test_every_task_the_readme_names_exists() -> None:
    import tasks

    assert isinstance(tasks.ns, Collection)
    named = set(re.findall(r"`invoke ([a-z][a-z-]*)", README))
    assert named, "the README names no task"
    missing = named - set(tasks.ns.task_names)
    assert not missing, missing


def test_quick_start_commands_exist() -> None:
    assert "scripts/bootstrap && .venv/bin/invoke secrets up" in README
    assert "scripts/bootstrap && .venv/bin/invoke test" in README
    assert (PROJECT_ROOT / "scripts" / "bootstrap").stat().st_mode & 0o111
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert "scripts/bootstrap" in ci and "invoke test" in ci
