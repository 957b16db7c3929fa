"""The Pulumi program under Pulumi's official mocks: what it declares in each mode, and how
it hardens and wires each container."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from infra.stack import API_USER, STORAGE_ROOT
from tests.infra.pulumi_harness import (
    CONTAINER,
    GET_NETWORK,
    IMAGE,
    NETWORK,
    PASSWORDS,
    PIDS_LIMIT,
    REMOTE_IMAGE,
    VOLUME,
    env_of,
    run_program,
    secret_files_of,
    unwrap,
)
from tests.infra.pulumi_names import API, EXTERNAL_PASSWORDS, LOADER, PG, PROXY, REDIS


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
        (VOLUME, LOADER),
        (CONTAINER, LOADER),
        (PIDS_LIMIT, f"{PG}-pids"),
        (PIDS_LIMIT, f"{REDIS}-pids"),
        (PIDS_LIMIT, f"{API}-pids"),
        (IMAGE, f"{PROXY}-image"),
        (CONTAINER, PROXY),
        (PIDS_LIMIT, f"{PROXY}-pids"),
    }
    assert run.calls == []
    assert run.of_type(NETWORK)["af-network"]["name"] == "af-network"
    assert {inputs["name"] for inputs in run.of_type(VOLUME).values()} == {
        "pg-data",
        "redis-data",
        "media-storage",
        LOADER,
    }


def test_external_mode_only_references_the_shared_network_and_servers() -> None:
    run = run_program({"mode": "external"}, EXTERNAL_PASSWORDS)

    assert run.kinds() == {
        (VOLUME, "media-storage"),
        (IMAGE, f"{API}-image"),
        (CONTAINER, API),
        (VOLUME, LOADER),
        (CONTAINER, LOADER),
        (PIDS_LIMIT, f"{API}-pids"),
        (IMAGE, f"{PROXY}-image"),
        (CONTAINER, PROXY),
        (PIDS_LIMIT, f"{PROXY}-pids"),
    }
    assert [(call.token, call.args) for call in run.calls] == [
        (GET_NETWORK, {"name": "af-network"})
    ]
    registered = json.dumps([unwrap(r.inputs) for r in run.resources], default=str)
    for theirs in ("pg-data", "redis-data", "POSTGRES_PASSWORD", "REDIS_PASSWORD"):
        assert theirs not in registered
    # ...but the API still talks to them by name, on the looked-up network.
    files = secret_files_of(run, API)
    assert urlsplit(files["/run/secrets/db_url"][0]).hostname == PG
    assert urlsplit(files["/run/secrets/redis_url"][0]).hostname == REDIS
    assert run.containers[API]["networksAdvanced"] == [{"name": "af-network", "aliases": [API]}]
    assert sorted(urn.rsplit("::", 1)[1] for urn in run.dependencies[API]) == sorted(
        [f"{API}-image", "media-storage", LOADER, LOADER]
    )


@pytest.mark.parametrize("mode", ["managed", "external"])
def test_every_service_container_is_on_af_network_with_its_alias(mode: str) -> None:
    run = run_program({"mode": mode}, PASSWORDS if mode == "managed" else EXTERNAL_PASSWORDS)

    services = {name: inputs for name, inputs in run.containers.items() if name != LOADER}
    assert services
    for name, inputs in services.items():
        assert inputs["name"] == name
        assert inputs["networksAdvanced"] == [{"name": "af-network", "aliases": [name]}]
    # The loader is never started and joins no network.
    loader = run.containers[LOADER]
    assert (loader["start"], loader["mustRun"], loader["networkMode"]) == (False, False, "none")
    assert "networksAdvanced" not in loader


def test_containers_are_hardened() -> None:
    run = run_program({})
    pg, redis, api = (run.containers[name] for name in (PG, REDIS, API))

    for inputs in (pg, redis, api):
        assert inputs["capabilities"]["drops"] == ["ALL"]
        assert inputs["securityOpts"] == ["no-new-privileges:true"]
    assert sorted(pg["capabilities"]["adds"]) == ["SETGID", "SETUID"]
    assert sorted(redis["capabilities"]["adds"]) == ["SETGID", "SETUID"]
    assert "adds" not in api["capabilities"]
    assert api["readOnly"] is True
    assert set(api["tmpfs"]) == {"/tmp"}
    assert not pg.get("readOnly") and not redis.get("readOnly")


def test_pids_limits_are_applied_to_each_container() -> None:
    run = run_program({"apiPidsLimit": "300", "redisPidsLimit": "64"})
    limits = run.of_type(PIDS_LIMIT)

    assert {
        name: (inputs["container_id"], inputs["pids_limit"]) for name, inputs in limits.items()
    } == {
        f"{PG}-pids": (f"{PG}-id", 512),
        f"{REDIS}-pids": (f"{REDIS}-id", 64),
        f"{API}-pids": (f"{API}-id", 300),
        f"{PROXY}-pids": (f"{PROXY}-id", 128),
    }
    for name in (PG, REDIS, API, PROXY):
        assert any(urn.endswith(f"::{name}") for urn in run.dependencies[f"{name}-pids"])


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
    assert not pg.get("ports") and not api.get("ports")  # the proxy publishes the API
    assert run.containers[PROXY]["ports"] == [
        {"internal": 8000, "external": 18080, "ip": "127.0.0.1", "protocol": "tcp"}
    ]
    assert api["volumes"] == [
        {"volumeName": "media-storage", "containerPath": STORAGE_ROOT, "readOnly": False},
        {"volumeName": LOADER, "containerPath": "/run/secrets", "readOnly": True},
    ]
    assert pg["volumes"][0]["volumeName"] == "pg-data"
    assert redis["volumes"][0]["volumeName"] == "redis-data"


def test_api_waits_for_both_servers_in_managed_mode() -> None:
    run = run_program({})

    assert sorted(set(urn.rsplit("::", 1)[1] for urn in run.dependencies[API])) == sorted(
        [PG, REDIS, "af-network", "media-storage", f"{API}-image", LOADER]
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
    assert set(run.of_type(IMAGE)) == {f"{API}-image", f"{PROXY}-image"}
    assert run.containers[PG]["image"] == f"sha256:{PG}-image"


def test_stack_outputs() -> None:
    run = run_program({"apiHostPort": "8081"})

    assert run.outputs["apiUrl"] == "http://127.0.0.1:8081"
    assert run.outputs["networkName"] == "af-network"
    assert sorted(run.outputs["volumeNames"]) == ["media-storage", "pg-data", "redis-data"]
    assert run.outputs["mode"] == "managed"
    assert run.outputs["stackConfig"]["api_host_port"] == 8081
    assert set(run.outputs["connectionSecrets"]) == {
        "postgres_password", "postgres_owner_password", "postgres_app_password",
        "redis_app_password",
    }  # fmt: skip
    external = run_program({"mode": "external"}, EXTERNAL_PASSWORDS)
    assert external.outputs["networkName"] == "af-network"
    assert external.outputs["volumeNames"] == ["media-storage"]
    assert "postgres_password" not in external.outputs["connectionSecrets"]


def test_api_replicas_share_one_image_behind_the_proxy() -> None:
    """apiReplicas=3: three API containers answering the DNS name the proxy resolves, one
    image resource, their own secret loaders; only the proxy publishes a port."""
    run = run_program({"apiReplicas": "3"})

    replicas = (API, f"{API}-2", f"{API}-3")
    assert set(run.of_type(IMAGE)) == {f"{PG}-image", f"{REDIS}-image", f"{API}-image",
                                       f"{PROXY}-image"}  # fmt: skip
    for name in replicas:
        inputs = run.containers[name]
        assert inputs["image"] == f"sha256:{API}-image"
        assert inputs["networksAdvanced"] == [{"name": "af-network", "aliases": [API]}]
        assert not inputs.get("ports")
        assert f"{name}-secrets" in run.containers
    envs = env_of(run.containers[PROXY])
    assert envs["PROXY_BACKEND"] == API


def test_image_ids_lead_back_to_the_tags_compose_uses() -> None:
    run = run_program({"buildLocalImages": "false", "postgresImage": "postgres:16"})

    assert {name: run.image_tags[run.containers[name]["image"]] for name in (PG, API)} == {
        PG: "postgres:16",
        API: "media-analysis-kit/api:latest",
    }
