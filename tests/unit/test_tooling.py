"""The pre-commit hooks are valid and run the same checks as ``invoke test``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from app_patch.settings import PROJECT_ROOT

CONFIG = PROJECT_ROOT / ".pre-commit-config.yaml"


def test_pre_commit_config_is_valid() -> None:
    tool = Path(sys.executable).parent / "pre-commit"
    done = subprocess.run(
        [str(tool), "validate-config", str(CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_pre_commit_runs_what_invoke_test_runs_before_the_suite() -> None:
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    entries = {hook["id"]: hook["entry"] for repo in config["repos"] for hook in repo["hooks"]}
    assert entries == {
        "ruff": ".venv/bin/ruff check --force-exclude",
        "ruff-format": ".venv/bin/ruff format --check --force-exclude",
        "mypy": ".venv/bin/mypy",
    }
    tasks = (PROJECT_ROOT / "tasks" / "dev.py").read_text(encoding="utf-8")
    for command in ("-m ruff check .", "-m ruff format --check .", "-m mypy"):
        assert command in tasks, command
