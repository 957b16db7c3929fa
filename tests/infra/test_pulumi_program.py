"""The Pulumi program under Pulumi's official mocks: what it declares in each mode."""

from __future__ import annotations

import hashlib
import json
import runpy
from dataclasses import fields
from decimal import Decimal
from urllib.parse import quote, urlsplit

import pulumi
import pytest
import yaml

from app_patch.settings import PROJECT_ROOT
from infra.config import STACK_SECRETS, StackConfig, config_from_source, pulumi_key
from infra.pulumi_resources import (
    NETWORK_IGNORE_CHANGES,
    SECRETS_REVISION_LABEL,
    VOLUME_IGNORE_CHANGES,
    canonical_cpus,
    provider_cpus_spelling,
)
from infra.stack import API_UID, API_USER, OWNER_LABEL, STORAGE_ROOT
from tests.infra.pulumi_harness import (
    CONTAINER,
    GET_NETWORK,
    IMAGE,
    NETWORK,
    PASSWORDS,
    PIDS_LIMIT,
    PROJECT,
    REMOTE_IMAGE,
    VOLUME,
    RecordingMocks,
    Run,
    env_of,
    fresh_event_loop,
    is_secret,
    run_mocked,
    run_program,
    secret_files_of,
    unwrap,
    uploads_of,
)

PG, REDIS, API = "af-postgres-1", "af-redis-1", "media-analysis-api"
LOADER = f"{API}-secrets"
PROXY = "media-analysis-proxy"
EXTERNAL_PASSWORDS = {
    key: value
    for key, value in PASSWORDS.items()
    if key not in {"postgresPassword", "redisPassword"}
}
"""External mode needs no password of the shared servers' administrators."""


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


def test_external_mode_does_not_need_the_servers_admin_passwords() -> None:
    required = {s.setting for s in STACK_SECRETS if not s.managed_only}

    assert set(EXTERNAL_PASSWORDS) == required
    with pytest.raises(pulumi.ConfigMissingError):
        run_program({}, EXTERNAL_PASSWORDS)  # managed: they are required


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


def test_api_gets_the_app_roles_urls_as_files_with_quoted_passwords() -> None:
    run = run_program(
        {"postgresAppUser": "media_app", "postgresDb": "media_analysis", "redisDb": "2"}
    )
    files = secret_files_of(run, API)
    env = env_of(run.containers[API])

    assert set(files) == {
        "/run/secrets/db_url",
        "/run/secrets/redis_url",
        "/run/secrets/api_key_digest",
    }
    assert {owner_and_mode[1:] for owner_and_mode in files.values()} == {(API_UID, API_UID, 0o400)}
    digest = hashlib.sha256(PASSWORDS["apiKey"].encode()).hexdigest()
    assert files["/run/secrets/api_key_digest"][0] == digest, "the API holds only the digest"
    database = urlsplit(files["/run/secrets/db_url"][0])
    assert database.scheme == "postgresql+psycopg"
    assert (database.hostname, database.port, database.path) == (PG, 5432, "/media_analysis")
    assert database.username == "media_app"
    assert database.password == quote(PASSWORDS["postgresAppPassword"], safe="")
    redis = urlsplit(files["/run/secrets/redis_url"][0])
    assert (redis.scheme, redis.hostname, redis.port, redis.path) == ("redis", REDIS, 6379, "/2")
    assert redis.username == "media-app"
    assert redis.password == quote(PASSWORDS["redisAppPassword"], safe="")
    assert env == {
        "MA_STORAGE_ROOT": STORAGE_ROOT,
        "MA_API_LOG_JSON": "true",
        "MA_DB_URL_FILE": "/run/secrets/db_url",
        "MA_REDIS_URL_FILE": "/run/secrets/redis_url",
        "MA_API_KEYS_FILE": "/run/secrets/api_key_digest",
        "FORWARDED_ALLOW_IPS": "127.0.0.1",
        "MA_DB_POOL_SIZE": "20",
        "MA_DB_MAX_OVERFLOW": "30",
    }
    # Three replicas share the one budget: at most 3 x (6 + 10) connections.
    three = env_of(run_program({"apiReplicas": "3"}).containers[f"{API}-3"])
    assert (three["MA_DB_POOL_SIZE"], three["MA_DB_MAX_OVERFLOW"]) == ("6", "10")


def test_servers_read_their_passwords_from_root_only_files() -> None:
    run = run_program({})

    assert secret_files_of(run, PG) == {
        "/run/secrets/postgres_password": (PASSWORDS["postgresPassword"], 0, 0, 0o400),
        "/run/secrets/postgres_owner_password": (PASSWORDS["postgresOwnerPassword"], 0, 0, 0o400),
        "/run/secrets/postgres_app_password": (PASSWORDS["postgresAppPassword"], 0, 0, 0o400),
    }
    assert secret_files_of(run, REDIS) == {
        "/run/secrets/redis_password": (PASSWORDS["redisPassword"], 0, 0, 0o400),
        "/run/secrets/redis_app_password": (PASSWORDS["redisAppPassword"], 0, 0, 0o400),
    }
    assert env_of(run.containers[PG])["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert env_of(run.containers[REDIS])["REDIS_APP_PASSWORD_FILE"] == (
        "/run/secrets/redis_app_password"
    )


def test_passwords_reach_the_engine_only_as_secrets_and_never_as_env() -> None:
    run = run_program({})

    for name in (PG, REDIS, LOADER):
        assert is_secret(run.containers[name]["uploads"]), f"{name} uploads sent in clear"
    for name in (PG, REDIS, API):
        assert not is_secret(run.containers[name]["envs"])
        assert not any(
            "PASSWORD=" in item or "_URL=" in item for item in env_of(run.containers[name])
        )
    assert "uploads" not in run.containers[API]  # read-only root: its files come via the loader
    clear = json.dumps(
        [
            {key: value for key, value in r.inputs.items() if not is_secret(value)}
            for r in run.resources
        ],
        default=str,
    )
    everywhere = json.dumps([unwrap(r.inputs) for r in run.resources], default=str)
    for setting, password in PASSWORDS.items():
        assert password not in clear
        assert quote(password, safe="") not in clear
        if setting == "apiKey":  # the API gets only its digest: the key goes nowhere
            assert password not in everywhere
            assert hashlib.sha256(password.encode()).hexdigest() in everywhere
            continue
        assert password in everywhere or quote(password, safe="") in everywhere


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


def test_new_api_secret_files_replace_the_api_container() -> None:
    """Uploads replace the loader on change; its id in a label then replaces the API too."""
    run = run_program({})
    labels = {item["label"]: item["value"] for item in run.containers[API]["labels"]}

    assert labels[SECRETS_REVISION_LABEL] == f"{LOADER}-id"
    volumes = {v["containerPath"]: v for v in run.containers[API]["volumes"]}
    assert volumes["/run/secrets"] == {
        "volumeName": LOADER,
        "containerPath": "/run/secrets",
        "readOnly": True,
    }
    assert set(uploads_of(run, API)) == {
        "/run/secrets/db_url",
        "/run/secrets/redis_url",
        "/run/secrets/api_key_digest",
    }


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


# --- data safety (infra/README.md, "Pulumi: data safety") ---------------------------------

DATA_VOLUMES = {"pg-data", "redis-data", "media-storage"}


def test_volumes_and_the_network_are_retained_and_never_replaced() -> None:
    run = run_program({})

    volumes = {name: opts for (typ, name), opts in run.options.items() if typ == VOLUME}
    assert set(volumes) == DATA_VOLUMES | {LOADER}
    for name, opts in volumes.items():
        assert opts.retain_on_delete, f"pulumi destroy would delete {name}"
        assert not opts.protect, "invoke down --volumes must still be able to remove it"
        assert not opts.delete_before_replace
        # Every ForceNew input of docker_volume but name (the resource name too).
        assert set(opts.ignore_changes) == set(VOLUME_IGNORE_CHANGES)
    assert set(VOLUME_IGNORE_CHANGES) == {"driver", "driverOpts", "labels"}
    network = run.options[(NETWORK, "af-network")]
    assert network.retain_on_delete and not network.protect
    assert set(network.ignore_changes) == {"driver", "labels"}
    # The volumes' and network's inputs are only what the ignore lists cover, plus name.
    for name, inputs in run.of_type(VOLUME).items():
        assert set(inputs) - set(VOLUME_IGNORE_CHANGES) == {"name"}, name
    assert set(run.of_type(NETWORK)["af-network"]) - set(NETWORK_IGNORE_CHANGES) == {"name"}


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


def test_servers_are_retained_and_the_api_is_not() -> None:
    """``pulumi destroy`` and a switch to external mode leave the managed servers running
    (their data and the shared network outlive the stack). The API (and its never-started
    secrets loader) is not retained: the provider replaces docker_container delete-first
    (pulumi-docker provider/resources.go:114, DeleteBeforeReplace), and a retained container
    would skip that delete and collide with its replacement's fixed name on every rebuild.
    (A retained server that must be replaced is removed by ``invoke up`` first.)"""
    run = run_program({})

    for name in (PG, REDIS):
        assert run.options[(CONTAINER, name)].retain_on_delete, name
    for name in (API, LOADER):
        assert not run.options[(CONTAINER, name)].retain_on_delete, name


def test_every_container_carries_the_stacks_owner_label() -> None:
    run = run_program({})

    for name, inputs in run.containers.items():
        labels = {label["label"]: label["value"] for label in inputs["labels"]}
        assert labels[OWNER_LABEL] == f"pulumi:{PROJECT}/test", name
    assert run.outputs["owner"] == f"pulumi:{PROJECT}/test"


def test_a_rebuilt_api_image_changes_only_the_api_containers_image() -> None:
    before = run_program({}, image_ids={f"{API}-image": "sha256:" + "a" * 64})
    after = run_program({}, image_ids={f"{API}-image": "sha256:" + "b" * 64})

    assert before.containers[API]["image"] == "sha256:" + "a" * 64
    assert after.containers[API]["image"] == "sha256:" + "b" * 64
    old, new = inputs_by_resource(before), inputs_by_resource(after)
    assert set(old) == set(new)
    changed = {
        (*resource, key)
        for resource in old
        for key in set(old[resource]) | set(new[resource])
        if old[resource].get(key) != new[resource].get(key)
    }
    assert changed == {(CONTAINER, API, "image")}
    # Every service runs its image by id, never by tag.
    for name in (PG, REDIS, API):
        assert before.containers[name]["image"].startswith("sha256:"), name


def test_a_second_run_without_change_declares_identical_inputs_and_options() -> None:
    first, second = run_program({"apiCpus": "10"}), run_program({"apiCpus": "10"})

    assert inputs_by_resource(first) == inputs_by_resource(second)
    assert first.options == second.options


def inputs_by_resource(run: Run) -> dict[tuple[str, str], dict[str, object]]:
    """Every registration's inputs (secrets unwrapped), by type and name: the order in which
    resources register is not fixed."""
    registered = {(r.typ, r.name): unwrap(r.inputs) for r in run.resources}
    assert len(registered) == len(run.resources)
    return registered


def test_read_back_inputs_are_spelled_as_the_provider_reads_them() -> None:
    run = run_program({"apiCpus": "10"})
    api = run.containers[API]

    assert api["cpus"] == "10."
    assert api["cpus"] == go_nano_to_decimal_string(int(Decimal(api["cpus"]) * 10**9))
    for name in (PG, REDIS, API):
        check = run.containers[name]["healthcheck"]
        for key in ("interval", "timeout", "startPeriod"):
            assert check[key] == go_duration_string(int(check[key].rstrip("s"))), (name, key)


def go_nano_to_decimal_string(nano: int) -> str:
    """terraform-provider-docker v4.5.0 internal/provider/helpers.go:133-149, literally:

        rat := new(big.Rat).SetFrac64(nanoInt64, 1e9)
        str := rat.FloatString(9)
        if strings.Count(str, "0") == 9 { return rat.FloatString(1) }
        str = strings.TrimRight(str, "0")
    (big.Rat.FloatString rounds its last digit half away from zero.)"""
    if nano == 0:
        return "0"
    whole, frac = divmod(nano, 10**9)
    text = f"{whole}.{frac:09d}"
    if text.count("0") == 9:
        tenths = (nano + 5 * 10**7) // 10**8  # positive: half away from zero
        return f"{tenths // 10}.{tenths % 10}"
    return text.rstrip("0")


def go_duration_string(seconds: int) -> str:
    """Go's time.Duration(seconds * time.Second).String()."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return (
        f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s" if minutes else f"{secs}s"
    )


@pytest.mark.parametrize(
    ("nano", "expected"),
    # helpers_test.go:35-40 (the provider's own table), then values the issue names.
    [
        (0, "0"),
        (10**9, "1.0"),
        (1_500_000_000, "1.5"),
        (2 * 10**9, "2.0"),
        (2_250_000_000, "2.25"),
        (10 * 10**9, "10."),
        (5 * 10**7, "0.1"),
        (105 * 10**6, "0.105"),
    ],
)
def test_provider_spelling_port_matches_the_providers_table(nano: int, expected: str) -> None:
    assert go_nano_to_decimal_string(nano) == expected
    assert provider_cpus_spelling(nano) == expected


@pytest.mark.parametrize(
    "value", ["1.0", "1", "1.5", "2.25", "10", "20", "64", "0.5", "0.25", "0.105", "3.333", "0.011"]
)
def test_canonical_cpus_is_a_fixed_point_of_the_providers_read_back(value: str) -> None:
    spelled = canonical_cpus(value)
    nano = int(Decimal(spelled) * 10**9)

    assert Decimal(spelled) == Decimal(value)  # the same number of CPUs...
    assert go_nano_to_decimal_string(nano) == spelled  # ...spelled as it comes back
    assert canonical_cpus(spelled) == spelled


@pytest.mark.parametrize("value", ["0.05", "10.05", "0.001", "0", "-1", "1e-10", "x"])
def test_cpus_the_provider_cannot_keep_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="cpus"):
        canonical_cpus(value)


def test_unkeepable_api_cpus_fails_naming_the_setting() -> None:
    with pytest.raises(pulumi.RunError) as error:
        run_program({"apiCpus": "0.05"})

    assert "apiCpus: cpus 0.05 would be read back by the docker provider as 0.1" in str(error.value)


def test_switching_managed_to_external_deletes_no_data_and_not_the_network() -> None:
    managed = run_program({"mode": "managed"})
    external = run_program({"mode": "external"}, EXTERNAL_PASSWORDS)

    dropped = set(managed.options) - set(external.options)
    kept = {key for key in dropped if managed.options[key].retain_on_delete}
    assert kept == {
        (NETWORK, "af-network"),
        (VOLUME, "pg-data"),
        (VOLUME, "redis-data"),
        (CONTAINER, PG),
        (CONTAINER, REDIS),
    }
    # What the switch does delete holds no data and runs nothing: the servers' images (Image
    # delete is a no-op, provider.go:490-495; RemoteImage keeps the image locally) and their
    # pids-limit records. The servers keep running: external mode finds them by name.
    # README: "Pulumi: data safety".
    assert dropped - kept == {
        (IMAGE, f"{PG}-image"),
        (IMAGE, f"{REDIS}-image"),
        (PIDS_LIMIT, f"{PG}-pids"),
        (PIDS_LIMIT, f"{REDIS}-pids"),
    }
    # Whatever both modes declare keeps the same options.
    for key in set(managed.options) & set(external.options):
        assert managed.options[key] == external.options[key], key


def test_image_ids_lead_back_to_the_tags_compose_uses() -> None:
    run = run_program({"buildLocalImages": "false", "postgresImage": "postgres:16"})

    assert {name: run.image_tags[run.containers[name]["image"]] for name in (PG, API)} == {
        PG: "postgres:16",
        API: "media-analysis-kit/api:latest",
    }


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
