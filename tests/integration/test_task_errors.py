"""Every database task fails with one clear line and a non-zero exit on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.loopback import free_port
from tests.integration.task_runs import run_task

BAD_URLS = {
    "unreachable": (
        f"postgresql+psycopg://u:secret@127.0.0.1:{free_port()}/x",
        "database unreachable",
    ),
    "malformed": ("::not a url::", "malformed database URL"),
    "wrong scheme": ("mysql://u:secret@localhost/x", "unsupported database URL scheme"),
}


@pytest.mark.parametrize("task", ["migrate", "db-status"])
@pytest.mark.parametrize("case", sorted(BAD_URLS))
def test_bad_database_url_gives_one_line(task: str, case: str, project_root: Path) -> None:
    url, expected = BAD_URLS[case]
    proc = run_task(task, url=url, cwd=project_root, timeout=60)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in proc.stderr
    assert "secret" not in proc.stderr + proc.stdout


def test_bad_setting_names_its_env_var(project_root: Path) -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ, MA_DB_POOL_SIZE="many")
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "db-status"],
        cwd=project_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "MA_DB_POOL_SIZE" in proc.stderr and "Traceback" not in proc.stderr
