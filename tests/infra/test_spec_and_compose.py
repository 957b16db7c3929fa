"""The spec's consistency rules, the config sources and the compose rendering (no Docker)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
import yaml
from dotenv import dotenv_values
from rich.console import Console

from app_patch.settings import PROJECT_ROOT
from infra import compose, secrets_file
from infra.config import (
    STACK_SECRETS,
    ConfigError,
    Mode,
    StackConfig,
    config_from_env,
    env_key,
    pulumi_key,
    secrets_for,
    secrets_from_env,
)
from infra.engines.base import UpRequest
from infra.engines.compose import ComposeEngine
from infra.progress import Quiet
from infra.spec import (
    Healthcheck,
    Network,
    NetworkAttachment,
    Secret,
    SecretFile,
    SecretTemplate,
    Service,
    SpecError,
    Stack,
)
from infra.stack import API_UID, build_stack
from infra.verify import report, run_checks

SECRETS = {
    "postgres_password": "p$ss word",
    "postgres_owner_password": "own$r pw",
    "postgres_app_password": "app/pw:1",
    "redis_password": "r@dis",
    "redis_app_password": "r@dis app",
    "api_key": "k3y/for clients",
}


def test_spec_rejects_references_to_undeclared_things() -> None:
    with pytest.raises(SpecError, match="undeclared network 'nope'"):
        Stack("p", (), (), (Service("a", "img", networks=(NetworkAttachment("nope"),)),))
    with pytest.raises(SpecError, match="undeclared secret 'missing'"):
        secret_file = SecretFile("x", SecretTemplate("{missing}"))
        Stack("p", (), (), (Service("a", "img", secret_files=(secret_file,)),))
    with pytest.raises(SpecError, match="no healthcheck"):
        Stack(
            "p", (), (), (Service("a", "i"), Service("b", "i", depends_on={"a": "service_healthy"}))
        )


def test_spec_orders_dependencies_first_and_rejects_cycles() -> None:
    check = Healthcheck(("CMD", "true"))
    a = Service("a", "i", healthcheck=check, depends_on={"b": "service_healthy"})
    b = Service("b", "i", healthcheck=check)
    assert [s.name for s in Stack("p", (), (), (a, b)).ordered_services()] == ["b", "a"]
    with pytest.raises(SpecError, match="cycle"):
        Stack(
            "p",
            (),
            (),
            (a, Service("b", "i", healthcheck=check, depends_on={"a": "service_started"})),
        )


def test_spec_refuses_a_secret_in_plain_env() -> None:
    with pytest.raises(SpecError, match="would carry a secret"):
        Stack(
            "p",
            (),
            (),
            (Service("a", "img", env={"URL": "redis://:{pw}@h"}),),
            secrets=(Secret("pw", "pw"),),
        )


def test_secret_template_quotes_only_when_asked() -> None:
    url = SecretTemplate("redis://:{pw}@h:6379/0", url_quote=True)
    assert url.resolve({"pw": "a b/@:"}) == "redis://:a%20b%2F%40%3A@h:6379/0"
    assert SecretTemplate("{pw}").resolve({"pw": "a b/@:"}) == "a b/@:"
    with pytest.raises(SpecError, match="no value"):
        url.resolve({})


def test_one_list_of_stack_secrets_drives_every_source() -> None:
    names = [secret.name for secret in STACK_SECRETS]
    assert names == list(SECRETS)
    assert {secret.setting for secret in STACK_SECRETS} == {pulumi_key(name) for name in names}
    assert tuple(env_key(name) for name in names) == secrets_file.PASSWORD_VARS
    assert build_stack(StackConfig()).secrets == STACK_SECRETS
    external = build_stack(StackConfig(mode="external")).secrets
    assert external == secrets_for("external")
    assert {s.name for s in external} == {
        "postgres_owner_password",
        "postgres_app_password",
        "redis_app_password",
        "api_key",
    }
    used = {
        name
        for service in build_stack(StackConfig()).services
        for secret_file in service.secret_files
        for name in secret_file.content.secret_names()
    }
    assert used == set(names)


@pytest.mark.parametrize("mode", ["managed", "external"])
def test_no_container_gets_a_secret_in_its_environment(mode: Mode) -> None:
    spec = build_stack(StackConfig(mode=mode))
    for service in spec.services:
        env = " ".join(f"{key}={value}" for key, value in service.env.items())
        for value in SECRETS.values():
            assert value not in env
        assert not any("PASSWORD" in key and not key.endswith("_FILE") for key in service.env), (
            service.name
        )
        for secret_file in service.secret_files:
            assert secret_file.target.startswith("/run/secrets/")
    api = spec.service("media-analysis-api")
    assert api.env["MA_DB_URL_FILE"] == "/run/secrets/db_url"
    assert api.env["MA_REDIS_URL_FILE"] == "/run/secrets/redis_url"
    assert {(f.uid, f.gid, f.mode) for f in api.secret_files} == {(API_UID, API_UID, 0o400)}
    files = api.resolved_files(SECRETS)
    assert files["/run/secrets/db_url"] == (
        "postgresql+psycopg://media_app:app%2Fpw%3A1@af-postgres-1:5432/media_analysis"
    )
    assert files["/run/secrets/redis_url"] == "redis://media-app:r%40dis%20app@af-redis-1:6379/0"


def test_compose_file_has_no_secret_values_and_escapes_dollars(tmp_path: Path) -> None:
    spec = build_stack(StackConfig())
    path = compose.write(spec, tmp_path / "rendered" / "compose.yml", tmp_path / "secrets")
    text = path.read_text()

    for value in (*SECRETS.values(), "p%24ss%20word", "r%40dis"):
        assert value not in text
    document = yaml.safe_load(text)
    redis = document["services"]["af-redis-1"]
    assert '"$$(cat /run/secrets/redis_password)"' in redis["healthcheck"]["test"][1]
    assert redis["environment"]["REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password"
    # Build contexts are relative to the file, so the rendered file can be moved with the repo.
    api_build = document["services"]["media-analysis-api"]["build"]
    assert (path.parent / api_build["context"]).resolve() == PROJECT_ROOT
    assert api_build["dockerfile"] == "infra/images/api/Dockerfile"


def test_compose_mounts_every_secret_file_from_the_secrets_root(tmp_path: Path) -> None:
    spec = build_stack(StackConfig())
    base = tmp_path / "rendered"
    document = compose.render(spec, base, secrets_root=tmp_path / "secrets")

    declared = document["secrets"]
    mounted = {
        (name, entry["source"], entry["target"])
        for name, service in document["services"].items()
        for entry in service.get("secrets", [])
    }
    expected = {
        (service.name, compose.secret_key(service.name, f.name), f.name)
        for service in spec.services
        for f in service.secret_files
    }
    assert mounted == expected
    assert set(declared) == {source for _, source, _ in mounted}
    for name, source, target in mounted:
        assert (base / declared[source]["file"]).resolve() == (
            tmp_path / "secrets" / name / target
        ).resolve()


def test_compose_renders_the_hardening() -> None:
    document = compose.render(build_stack(StackConfig()))
    api = document["services"]["media-analysis-api"]

    assert api["read_only"] is True
    assert api["tmpfs"] == ["/tmp:rw,noexec,nosuid,nodev,size=256m,mode=1777"]
    assert api["pids_limit"] == 512
    for name in ("af-postgres-1", "af-redis-1", "media-analysis-api"):
        service = document["services"][name]
        assert service["cap_drop"] == ["ALL"]
        assert service["security_opt"] == ["no-new-privileges:true"]
        assert service["pids_limit"] > 0
    assert "cap_add" not in api
    for name in ("af-postgres-1", "af-redis-1"):
        assert document["services"][name]["cap_add"] == ["SETGID", "SETUID"]
        assert "read_only" not in document["services"][name]


def test_secret_files_are_written_owned_by_their_reader(tmp_path: Path) -> None:
    spec = build_stack(StackConfig())
    root = tmp_path / "secrets"

    changed = secrets_file.write_secret_files(spec, SECRETS, root)

    # PostgreSQL reads its files only at initdb: new ones never restart it.
    assert changed == ["af-redis-1", "media-analysis-api"]
    assert (root.stat().st_mode & 0o777) == 0o700
    for service in spec.services:
        if not service.secret_files:
            continue  # the proxy: no secrets
        assert (root / service.name).stat().st_mode & 0o777 == 0o700
        for f in service.secret_files:
            path = secrets_file.host_path(service.name, f, root)
            status = path.stat()
            assert path.read_text() == f.content.resolve(SECRETS)
            if os.geteuid() == 0:
                assert (status.st_uid, status.st_gid, status.st_mode & 0o777) == (
                    f.uid,
                    f.gid,
                    0o400,
                )
            else:
                assert status.st_mode & 0o777 == 0o444
    # Unchanged passwords: nothing rewritten; one rotated: only its consumers.
    assert secrets_file.write_secret_files(spec, SECRETS, root) == []
    rotated = {**SECRETS, "redis_app_password": "rotated-password"}
    assert secrets_file.write_secret_files(spec, rotated, root) == [
        "af-redis-1",
        "media-analysis-api",
    ]
    rotated["postgres_app_password"] = "rotated-too"
    assert secrets_file.write_secret_files(spec, rotated, root) == ["media-analysis-api"]
    assert (root / "af-postgres-1" / "postgres_app_password").read_text() == "rotated-too"
    assert not list(root.rglob(".*"))  # no temp file left behind


def test_stack_env_gets_missing_passwords_appended_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "stack.env"
    path.write_text("MA_INFRA_POSTGRES_PASSWORD=kept\nMA_INFRA_REDIS_PASSWORD=also-kept")

    added = secrets_file.ensure_stack_env(path)

    values = dotenv_values(path)
    assert added == [
        "MA_INFRA_POSTGRES_OWNER_PASSWORD",
        "MA_INFRA_POSTGRES_APP_PASSWORD",
        "MA_INFRA_REDIS_APP_PASSWORD",
        "MA_INFRA_API_KEY",
    ]
    assert values["MA_INFRA_POSTGRES_PASSWORD"] == "kept"
    assert values["MA_INFRA_REDIS_PASSWORD"] == "also-kept"
    assert all(len(values[name] or "") == 48 for name in added)
    assert path.stat().st_mode & 0o777 == 0o600
    assert secrets_file.ensure_stack_env(path) == []


def test_external_compose_declares_only_the_api() -> None:
    document = compose.render(build_stack(StackConfig(mode="external")))

    assert set(document["services"]) == {"media-analysis-api", "media-analysis-proxy"}
    assert document["networks"] == {"af-network": {"name": "af-network", "external": True}}
    assert set(document["volumes"]) == {"media-storage"}
    assert "depends_on" not in document["services"]["media-analysis-api"]


def test_env_config_names_the_bad_setting() -> None:
    with pytest.raises(ConfigError, match="MA_INFRA_API_HOST_PORT: must be an integer"):
        config_from_env({"MA_INFRA_API_HOST_PORT": "eighty"})
    with pytest.raises(ConfigError, match="MA_INFRA_MODE: must be 'managed' or 'external'"):
        config_from_env({"MA_INFRA_MODE": "shared"})
    assert config_from_env({"MA_INFRA_MODE": "external"}).mode == "external"


def test_env_secrets_name_the_missing_password() -> None:
    env = {env_key(name): "x" for name in SECRETS} | {"MA_INFRA_REDIS_APP_PASSWORD": "  "}
    with pytest.raises(ConfigError, match="MA_INFRA_REDIS_APP_PASSWORD: is required"):
        secrets_from_env(env)
    external = {k: v for k, v in env.items() if k != "MA_INFRA_POSTGRES_PASSWORD"}
    external["MA_INFRA_REDIS_APP_PASSWORD"] = "y"
    assert set(secrets_from_env(external, secrets_for("external"))) == {
        "postgres_owner_password",
        "postgres_app_password",
        "redis_app_password",
        "api_key",
    }


def test_up_without_a_password_fails_before_touching_docker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in SECRETS:
        monkeypatch.setenv(env_key(name), "set")
    monkeypatch.delenv("MA_INFRA_POSTGRES_APP_PASSWORD")
    with pytest.raises(ConfigError) as error:
        ComposeEngine().up(UpRequest(build=False), Quiet())
    assert str(error.value) == (
        "configuration setting MA_INFRA_POSTGRES_APP_PASSWORD: is required "
        "(the password of the API's role (DML only)) and is not set"
    )


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("MA_INFRA_FORWARDED_ALLOW_IPS", "*", "no '\\*'"),
        ("MA_INFRA_POSTGRES_APP_USER", "media", "the three PostgreSQL roles must differ"),
        ("MA_INFRA_REDIS_APP_USER", "default", "not be 'default'"),
        ("MA_INFRA_REDIS_MAXMEMORY_PERCENT", "95", "between 10 and 90"),
        ("MA_INFRA_API_PIDS_LIMIT", "0", "between 32 and 65536"),
    ],
)
def test_hardening_settings_refuse_unsafe_values(setting: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_env({setting: value})
    assert config_from_env({"MA_INFRA_FORWARDED_ALLOW_IPS": "10.0.0.5,172.18.0.0/16"})


def test_an_existing_network_or_volume_not_made_by_the_project_is_adopted_as_external() -> None:
    """Made by hand (no labels) or by another project: rendered `external: true` with its
    `name:` (what compose v1 and v2 both accept), so neither up nor down replaces it."""
    spec = build_stack(StackConfig())
    ours = {compose.PROJECT_LABEL: spec.project}
    adopted = compose.adopt(
        spec,
        networks={"af-network": {}},
        volumes={
            "pg-data": {compose.PROJECT_LABEL: "someone-else"},
            "redis-data": ours,
        },
    )
    document = compose.render(adopted)

    assert document["networks"] == {"af-network": {"name": "af-network", "external": True}}
    assert document["volumes"]["pg-data"] == {"name": "pg-data", "external": True}
    assert document["volumes"]["redis-data"]["labels"]  # ours: still managed
    assert "external" not in document["volumes"]["media-storage"]  # missing: compose makes it
    api = document["services"]["media-analysis-api"]
    assert set(api["networks"]) == {"af-network"}  # services attach to it as before


def test_nothing_is_adopted_when_the_project_made_it_or_nothing_exists() -> None:
    spec = build_stack(StackConfig())
    ours = {compose.PROJECT_LABEL: spec.project, "com.docker.compose.network": "af-network"}

    assert compose.adopt(spec, {}, {}) == spec
    assert compose.adopt(spec, {"af-network": ours}, {"pg-data": ours}) == spec
    rendered = compose.render(compose.adopt(spec, {"af-network": ours}, {}))
    assert rendered["networks"]["af-network"]["driver"] == "bridge"
    assert "external" not in rendered["networks"]["af-network"]
    external = build_stack(StackConfig(mode="external"))  # already external: unchanged
    assert compose.adopt(external, {"af-network": {}}, {}) == external


def test_network_spec_external_flag_round_trips() -> None:
    assert Network("af-network", external=True).external


def test_verify_reports_every_check_failed_when_nothing_runs() -> None:
    token = secrets.token_hex(4)
    config = StackConfig(
        postgres_host=f"absent-pg-{token}",
        redis_host=f"absent-redis-{token}",
        api_name=f"absent-api-{token}",
        proxy_name=f"absent-proxy-{token}",
    )
    console = Console(record=True, width=200)

    results = run_checks(config)

    assert len(results) == 26
    assert not any(result.ok for result in results)
    assert all("absent-" in result.detail for result in results), [
        r.detail for r in results if "absent-" not in r.detail
    ]
    assert report(results, console) == 1
    assert "26 of 26 checks failed" in console.export_text()
