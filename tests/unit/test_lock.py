"""The API image's lock file stays in sync with pyproject.toml (no network needed)."""

from __future__ import annotations

from scripts.lock import LOCK, dependencies, problems


def test_the_image_lock_matches_pyproject() -> None:
    assert problems(LOCK.read_text(encoding="utf-8"), dependencies()) == []


def test_a_changed_dependency_is_noticed() -> None:
    lock = LOCK.read_text(encoding="utf-8")
    assert problems(lock, [*dependencies(), "left-pad>=1"]) != []
    raised = [d if not d.startswith("pillow") else "pillow>=99" for d in dependencies()]
    assert any("pillow" in p for p in problems(lock, raised))


def test_every_pin_is_hashed() -> None:
    lock = LOCK.read_text(encoding="utf-8")
    pins = [line for line in lock.splitlines() if "==" in line and not line.startswith("#")]
    assert pins and all(line.rstrip().endswith("\\") for line in pins)
