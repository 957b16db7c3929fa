"""The Pulumi program's config: a missing or wrong setting fails in one message naming it, and
the project files (Pulumi.yaml, Pulumi.dev.yaml) run the program and document its settings."""

from __future__ import annotations

import runpy
from dataclasses import fields

import pulumi
import pytest
import yaml

from app_patch.settings import PROJECT_ROOT
from infra.config import STACK_SECRETS, StackConfig, config_from_source, pulumi_key
from tests.infra.pulumi_harness import (
    CONTAINER,
    PASSWORDS,
    PROJECT,
    RecordingMocks,
    fresh_event_loop,
    run_mocked,
    run_program,
)
from tests.infra.pulumi_names import API, LOADER, PG, PROXY, REDIS


@pytest.mark.parametrize("missing", sorted(PASSWORDS))
def test_missing_password_fails_with_one_message_naming_it(missing: str) -> None:
    passwords = {key: value for key, value in PASSWORDS.items() if key != missing}

    with pytest.raises(pulumi.ConfigMissingError) as error:
        run_program({}, passwords)

    assert f"media-analysis-kit:{missing}" in str(error.value)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("apiHostPort", "http", "apiHostPort: must be an integer, not 'http'"),
        ("apiHostPort", "70000", "apiHostPort: must be between 1 and 65535"),
        ("mode", "both", "mode: must be 'managed' or 'external'"),
        ("buildLocalImages", "maybe", "buildLocalImages: must be true or false"),
        ("networkName", "af network", "networkName: must be a Docker object name"),
    ],
)
def test_wrong_setting_fails_with_one_message_naming_it(
    key: str, value: str, expected: str
) -> None:
    with pytest.raises(pulumi.RunError) as error:
        run_program({key: value})

    assert expected in str(error.value)
    assert str(error.value).count("\n") == 0


def test_project_file_entry_point_runs_the_program() -> None:
    project = yaml.safe_load((PROJECT_ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == PROJECT
    assert project["main"] == "infra/"
    assert project["runtime"] == {
        "name": "python",
        "options": {"toolchain": "pip", "virtualenv": ".venv"},
    }
    fresh_event_loop()
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack="dev", preview=False)
    pulumi.runtime.set_all_config({f"{PROJECT}:{key}": value for key, value in PASSWORDS.items()})

    def program() -> pulumi.Output[None]:
        runpy.run_path(str(PROJECT_ROOT / project["main"]), run_name="__main__")
        return pulumi.Output.from_input(None)

    run_mocked(program)
    assert {r.name for r in mocks.resources if r.typ == CONTAINER} == {
        PG, REDIS, API, LOADER, PROXY
    }  # fmt: skip


def test_documented_dev_stack_config_is_the_defaults() -> None:
    documented = yaml.safe_load((PROJECT_ROOT / "Pulumi.dev.yaml").read_text())["config"]
    values = {key.removeprefix(f"{PROJECT}:"): str(value) for key, value in documented.items()}
    known = {pulumi_key(field.name) for field in fields(StackConfig)}

    assert set(values) == known
    assert config_from_source(values.get, pulumi_key) == StackConfig()


def test_project_file_documents_every_setting_and_secret() -> None:
    """Pulumi.yaml's template config names every StackConfig key with its default and every
    stack secret as a secret (what `pulumi new` prompts for, and the one reference)."""
    documented = yaml.safe_load((PROJECT_ROOT / "Pulumi.yaml").read_text())["template"]["config"]
    settings = {pulumi_key(f.name): f.default for f in fields(StackConfig)}
    secrets = {s.setting for s in STACK_SECRETS}
    assert set(documented) == set(settings) | secrets
    for key, default in settings.items():
        spelled = str(default).lower() if isinstance(default, bool) else str(default)
        assert documented[key]["default"] == spelled and documented[key]["description"], key
    for key in secrets:
        assert documented[key]["secret"] is True and "default" not in documented[key], key
