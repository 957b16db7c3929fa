"""The public entry point stays ``from app_patch import install``, and the kit has one version."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import app_patch
from app_patch import wiring


def test_install_is_the_public_entry_point() -> None:
    assert app_patch.install is wiring.install
    assert "install" in app_patch.__all__


def test_importing_the_package_does_not_load_fastapi() -> None:
    probe = "import sys, app_patch.settings, app_patch.db; print('fastapi' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"


def test_one_version_for_the_package_and_the_api() -> None:
    from api.main import VERSION

    assert importlib.metadata.version("media-analysis-kit") == app_patch.__version__ == VERSION
