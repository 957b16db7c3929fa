"""Which URL each role's work gets: migrations take the migration URL (from a variable or a
file), the app the app URL, unreadable URL files are one error naming the variable, and the
embedded default runs the app as the app role."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from app_patch import migrate as migrations
from app_patch.db_roles import role_problems
from app_patch.errors import describe
from app_patch.settings import PROJECT_ROOT, DatabaseSettings, RedisSettings
from tests.conftest import DatabaseFactory
from tests.integration.db_roles_support import scalar

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------- settings


def _child_env(**env: str) -> dict[str, str]:
    """This environment without any setting of ours, plus ``env``."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MA_") and k not in {"DATABASE_URL", "REDIS_URL"}
    }
    return {**base, **env}


def _child(env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=_child_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


UPGRADE = (
    "from app_patch import migrate; r = migrate.upgrade(); print(r.from_revision, r.to_revision)"
)


def test_migrations_use_the_migration_url_and_the_app_url_cannot_migrate(
    databases: DatabaseFactory, tmp_path: Path
) -> None:
    owner = databases.create("split")
    app = databases.roles.app_url(owner)

    proc = _child({"MA_DB_URL": app}, UPGRADE)
    assert proc.returncode != 0 and "permission denied" in proc.stderr, proc.stderr

    secret = tmp_path / "migration_url"
    secret.write_text(owner + "\n")
    proc = _child({"MA_DB_URL": app, "MA_DB_MIGRATION_URL_FILE": str(secret)}, UPGRADE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "0002"]
    assert role_problems(app) == []

    # alembic's own CLI goes through migrations/env.py: the owner URL from the settings
    proc = subprocess.run(
        [sys.executable, "-m", "alembic", "downgrade", "0001"],
        cwd=PROJECT_ROOT,
        env=_child_env(MA_DB_URL=app, MA_DB_MIGRATION_URL=owner),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert migrations.current_revision(app) == "0001"


def test_url_files_are_read_when_the_variable_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MA_DB_URL", "DATABASE_URL", "MA_DB_MIGRATION_URL", "MA_REDIS_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    files = {}
    for name, value in {
        "db": "postgresql://app:s3cret@db/x",
        "mig": "postgresql://owner:s3cret@db/x",
        "redis": "redis://:s3cret@cache:6379/0",
    }.items():
        files[name] = tmp_path / name
        files[name].write_text(value + "\n")
    monkeypatch.setenv("MA_DB_URL_FILE", str(files["db"]))
    monkeypatch.setenv("MA_DB_MIGRATION_URL_FILE", str(files["mig"]))
    monkeypatch.setenv("MA_REDIS_URL_FILE", str(files["redis"]))
    db, redis = DatabaseSettings(), RedisSettings()
    assert db.url is not None and db.url.get_secret_value() == "postgresql://app:s3cret@db/x"
    assert db.migration_url is not None
    assert db.migration_url.get_secret_value() == "postgresql://owner:s3cret@db/x"
    assert redis.url is not None and redis.url.get_secret_value() == "redis://:s3cret@cache:6379/0"
    assert "s3cret" not in repr(db) + repr(redis)

    monkeypatch.setenv("DATABASE_URL", "postgresql://plain@db/x")  # the variable wins
    assert DatabaseSettings().url.get_secret_value() == "postgresql://plain@db/x"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("group", "variable"),
    [
        (DatabaseSettings, "MA_DB_URL_FILE"),
        (DatabaseSettings, "MA_DB_MIGRATION_URL_FILE"),
        (RedisSettings, "MA_REDIS_URL_FILE"),
    ],
)
def test_an_unreadable_url_file_is_one_error_naming_the_variable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    group: type[DatabaseSettings | RedisSettings],
    variable: str,
) -> None:
    for name in ("MA_DB_URL", "DATABASE_URL", "MA_DB_MIGRATION_URL", "MA_REDIS_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "missing"))
    with pytest.raises(ValidationError) as caught:
        group()
    line = describe(caught.value)
    assert line is not None
    assert line.startswith(f"invalid settings: {variable}: ") and "No such file" in line, line

    empty = tmp_path / "empty"
    empty.write_text("\n")
    monkeypatch.setenv(variable, str(empty))
    with pytest.raises(ValidationError, match="is empty"):
        group()


def test_a_missing_url_file_fails_a_task_with_one_line(tmp_path: Path) -> None:
    proc = _child(
        {"MA_DB_MIGRATION_URL_FILE": str(tmp_path / "nope"), "MA_DB_URL": "postgresql://x@h/d"},
        "from app_patch.errors import one_line_errors\n"
        "from app_patch.settings import get_settings\n"
        "with one_line_errors():\n    get_settings()\n",
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: invalid settings: MA_DB_MIGRATION_URL_FILE: "), lines
    assert f"cannot read {tmp_path / 'nope'}: No such file or directory" in lines[0]


def test_a_migration_url_without_an_app_url_is_refused_for_the_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app_patch.errors import OperatorError
    from app_patch.settings import Settings
    from app_patch.target import migration_url, resolve_target

    for name in ("MA_DB_URL", "DATABASE_URL", "MA_DB_URL_FILE"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(db=DatabaseSettings(migration_url="postgresql://owner@db/x"))
    assert migration_url(settings) == "postgresql://owner@db/x", "a migration job needs no more"
    with pytest.raises(OperatorError, match="MA_DB_URL is not"):
        resolve_target(settings)


def test_target_falls_back_to_the_app_url_for_migrations() -> None:
    from app_patch.settings import Settings
    from app_patch.target import resolve_target

    one = Settings(db=DatabaseSettings(url="postgresql://only@db/x"))
    assert resolve_target(one).migration_url == "postgresql://only@db/x"
    two = Settings(
        db=DatabaseSettings(url="postgresql://app@db/x", migration_url="postgresql://own@db/x")
    )
    target = resolve_target(two)
    assert (target.database_url, target.migration_url) == (
        "postgresql://app@db/x",
        "postgresql://own@db/x",
    )


@pytest.fixture
def embedded_data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"
    from app_patch.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path / "data" / "pg")
    if (server.data_dir / "postmaster.pid").exists():
        server.start()  # a handle, to stop it
        server.stop()


def test_the_embedded_default_runs_the_app_as_the_app_role(
    embedded_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No URL configured: pgserver under data_dir, with both roles; a second resolve (a new
    process, a rerun) converges on the same URLs."""
    from app_patch.settings import Settings
    from app_patch.target import resolve_target

    for name in ("MA_DB_URL", "DATABASE_URL", "MA_DB_MIGRATION_URL", "MA_DB_URL_FILE"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(data_dir=embedded_data_dir, db=DatabaseSettings())
    target = resolve_target(settings)
    assert target.database_url != target.migration_url
    migrations.upgrade(target.migration_url)
    assert resolve_target(settings) == target
    assert role_problems(target.database_url) == []
    assert scalar(target.database_url, "SELECT current_user") == "ma_app"
