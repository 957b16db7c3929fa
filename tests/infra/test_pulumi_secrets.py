"""The Pulumi program under Pulumi's official mocks: which passwords each mode needs, and how
they reach the containers (as secret files, never as env)."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import quote, urlsplit

import pulumi
import pytest

from infra.config import STACK_SECRETS
from infra.pulumi_resources import SECRETS_REVISION_LABEL
from infra.stack import API_UID, STORAGE_ROOT
from tests.infra.pulumi_harness import (
    PASSWORDS,
    env_of,
    is_secret,
    run_program,
    secret_files_of,
    unwrap,
    uploads_of,
)
from tests.infra.pulumi_names import API, EXTERNAL_PASSWORDS, LOADER, PG, REDIS


def test_external_mode_does_not_need_the_servers_admin_passwords() -> None:
    required = {s.setting for s in STACK_SECRETS if not s.managed_only}

    assert set(EXTERNAL_PASSWORDS) == required
    with pytest.raises(pulumi.ConfigMissingError):
        run_program({}, EXTERNAL_PASSWORDS)  # managed: they are required


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
