"""The Pulumi program under Pulumi's official mocks: what it declares in each mode."""

from __future__ import annotations

import json
import runpy
from dataclasses import fields
from pathlib import Path
from urllib.parse import quote, urlsplit

import pulumi
import pytest
import yaml

from infra.config import StackConfig, config_from_source, pulumi_key
from infra.stack import API_USER, STORAGE_ROOT
from tests.infra.pulumi_harness import (
    CONTAINER,
    GET_NETWORK,
    IMAGE,
    NETWORK,
    PASSWORDS,
    PROJECT,
    REMOTE_IMAGE,
    VOLUME,
    RecordingMocks,
    env_of,
    is_secret,
    run_program,
)

PG, REDIS, API = "af-postgres-1", "af-redis-1", "media-analysis-api"
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_managed_mode_declares_exactly_the_whole_stack() -> None:
    run = run_program({"mode": "managed"})

    assert run.kinds() == {
        (NETWORK, "af-network"),
        (VOLUME, "pg-data"),
        (VOLUME, "redis-data"),
        (VOLUME, "media-storage"),
        (IMAGE, f"{PG}-image"),
        (IMAGE, f"{REDIS}-image"),
        (IMAGE, f"{API}-image"),
        (CONTAINER, PG),
        (CONTAINER, REDIS),
        (CONTAINER, API),
    }
    assert run.calls == []
    assert run.of_type(NETWORK)["af-network"]["name"] == "af-network"
    assert {inputs["name"] for inputs in run.of_type(VOLUME).values()} == {
        "pg-data",
        "redis-data",
        "media-storage",
    }


def test_external_mode_only_references_the_shared_network_and_servers() -> None:
    run = run_program({"mode": "external"})

    assert run.kinds() == {
        (VOLUME, "media-storage"),
        (IMAGE, f"{API}-image"),
        (CONTAINER, API),
    }
    assert [(call.token, call.args) for call in run.calls] == [
        (GET_NETWORK, {"name": "af-network"})
    ]
    registered = json.dumps([r.inputs for r in run.resources], default=str)
    for theirs in ("pg-data", "redis-data", "POSTGRES_PASSWORD", "REDIS_PASSWORD"):
        assert theirs not in registered
    # ...but the API still talks to them by name, on the looked-up network.
    env = env_of(run.containers[API])
    assert urlsplit(env["DATABASE_URL"]).hostname == PG
    assert urlsplit(env["REDIS_URL"]).hostname == REDIS
    assert run.containers[API]["networksAdvanced"] == [{"name": "af-network", "aliases": [API]}]
    assert sorted(urn.rsplit("::", 1)[1] for urn in run.dependencies[API]) == [
        f"{API}-image",
        "media-storage",
    ]


@pytest.mark.parametrize("mode", ["managed", "external"])
def test_every_container_is_on_af_network_with_its_alias(mode: str) -> None:
    run = run_program({"mode": mode})

    assert run.containers
    for name, inputs in run.containers.items():
        assert inputs["name"] == name
        assert inputs["networksAdvanced"] == [{"name": "af-network", "aliases": [name]}]


def test_api_urls_point_at_the_shared_servers_with_quoted_passwords() -> None:
    run = run_program({"postgresUser": "media", "postgresDb": "media_analysis", "redisDb": "2"})
    env = env_of(run.containers[API])

    database = urlsplit(env["DATABASE_URL"])
    assert database.scheme == "postgresql+psycopg"
    assert (database.hostname, database.port, database.path) == (PG, 5432, "/media_analysis")
    assert database.username == "media"
    assert database.password == quote(PASSWORDS["postgresPassword"], safe="")
    redis = urlsplit(env["REDIS_URL"])
    assert (redis.scheme, redis.hostname, redis.port, redis.path) == ("redis", REDIS, 6379, "/2")
    assert redis.password == quote(PASSWORDS["redisPassword"], safe="")
    assert env["MA_STORAGE_ROOT"] == STORAGE_ROOT
    assert env["MA_API_LOG_JSON"] == "true"
    assert env_of(run.containers[PG])["POSTGRES_PASSWORD"] == PASSWORDS["postgresPassword"]
    assert env_of(run.containers[REDIS])["REDIS_PASSWORD"] == PASSWORDS["redisPassword"]


def test_passwords_reach_the_engine_only_as_secrets() -> None:
    run = run_program({})

    for name in (PG, REDIS, API):
        assert is_secret(run.containers[name]["envs"]), f"{name} envs sent in clear"
    clear = json.dumps(
        [
            {key: value for key, value in r.inputs.items() if not is_secret(value)}
            for r in run.resources
        ],
        default=str,
    )
    for password in PASSWORDS.values():
        assert password not in clear
        assert quote(password, safe="") not in clear

    secret_flags = pulumi.Output.all(
        *(envs.is_secret() for envs in run.program.rendered.envs.values())
    )
    seen: list[list[bool]] = []

    @pulumi.runtime.test
    def check() -> pulumi.Output[None]:
        return secret_flags.apply(seen.append)

    check()
    assert seen == [[True, True, True]]


def test_healthchecks_restart_user_limits_and_ports() -> None:
    run = run_program({"apiHostPort": "18080"})
    pg, redis, api = (run.containers[name] for name in (PG, REDIS, API))

    assert pg["healthcheck"]["tests"][:2] == ["CMD", "pg_isready"]
    assert redis["healthcheck"]["tests"][0] == "CMD-SHELL"
    assert "redis-cli" in redis["healthcheck"]["tests"][1]
    assert "/health/ready" in " ".join(api["healthcheck"]["tests"])
    for inputs in (pg, redis, api):
        check = inputs["healthcheck"]
        assert {"interval", "timeout", "retries", "startPeriod"} <= set(check)
        assert inputs["restart"] == "unless-stopped"
        assert inputs["wait"] is True
        assert inputs["mustRun"] is True
        assert inputs["memory"] > 0

    assert api["user"] == API_USER
    assert not api["user"].startswith("0:") and api["user"] != "root"
    assert api["cpus"] == "1.0"
    assert not pg.get("ports")
    assert api["ports"] == [
        {"internal": 8000, "external": 18080, "ip": "127.0.0.1", "protocol": "tcp"}
    ]
    assert api["volumes"] == [
        {"volumeName": "media-storage", "containerPath": STORAGE_ROOT, "readOnly": False}
    ]
    assert pg["volumes"][0]["volumeName"] == "pg-data"
    assert redis["volumes"][0]["volumeName"] == "redis-data"


def test_api_waits_for_both_servers_in_managed_mode() -> None:
    run = run_program({})

    assert sorted(urn.rsplit("::", 1)[1] for urn in run.dependencies[API]) == sorted(
        [PG, REDIS, "af-network", "media-storage", f"{API}-image"]
    )


def test_postgres_port_is_published_only_when_asked() -> None:
    run = run_program({"postgresHostPort": "15432"})

    assert run.containers[PG]["ports"] == [
        {"internal": 5432, "external": 15432, "ip": "127.0.0.1", "protocol": "tcp"}
    ]


def test_prebuilt_images_are_referenced_not_built() -> None:
    run = run_program(
        {"buildLocalImages": "false", "postgresImage": "postgres:16", "redisImage": "redis:7"}
    )

    remote = run.of_type(REMOTE_IMAGE)
    assert {inputs["name"] for inputs in remote.values()} == {"postgres:16", "redis:7"}
    assert all(inputs["keepLocally"] is True for inputs in remote.values())
    assert set(run.of_type(IMAGE)) == {f"{API}-image"}
    assert run.containers[PG]["image"] == f"sha256:{PG}-image"


def test_stack_outputs() -> None:
    run = run_program({"apiHostPort": "8081"})

    assert run.outputs["apiUrl"] == "http://127.0.0.1:8081"
    assert run.outputs["networkName"] == "af-network"
    assert sorted(run.outputs["volumeNames"]) == ["media-storage", "pg-data", "redis-data"]
    external = run_program({"mode": "external"})
    assert external.outputs["networkName"] == "af-network"
    assert external.outputs["volumeNames"] == ["media-storage"]


@pytest.mark.parametrize("missing", ["postgresPassword", "redisPassword"])
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
    project = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == PROJECT
    assert project["main"] == "infra/"
    assert project["runtime"] == {
        "name": "python",
        "options": {"toolchain": "pip", "virtualenv": ".venv"},
    }
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack="dev", preview=False)
    pulumi.runtime.set_all_config({f"{PROJECT}:{key}": value for key, value in PASSWORDS.items()})

    @pulumi.runtime.test
    def program() -> pulumi.Output[None]:
        runpy.run_path(str(REPO_ROOT / project["main"]), run_name="__main__")
        return pulumi.Output.from_input(None)

    program()
    assert {r.name for r in mocks.resources if r.typ == CONTAINER} == {PG, REDIS, API}


def test_documented_dev_stack_config_is_the_defaults() -> None:
    documented = yaml.safe_load((REPO_ROOT / "Pulumi.dev.yaml").read_text())["config"]
    values = {key.removeprefix(f"{PROJECT}:"): str(value) for key, value in documented.items()}
    known = {pulumi_key(field.name) for field in fields(StackConfig)}

    assert set(values) == known
    assert config_from_source(values.get, pulumi_key) == StackConfig()
