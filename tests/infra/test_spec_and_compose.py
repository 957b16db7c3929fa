"""The spec's consistency rules, the config sources and the compose rendering (no Docker)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from infra import compose
from infra.config import ConfigError, StackConfig, config_from_env, secrets_from_env
from infra.engine import up
from infra.spec import (
    Healthcheck,
    Network,
    NetworkAttachment,
    SecretEnv,
    Service,
    SpecError,
    Stack,
)
from infra.stack import build_stack
from infra.verify_containers import report, run_checks

SECRETS = {"postgres_password": "p$ss word", "redis_password": "r@dis"}


def test_spec_rejects_references_to_undeclared_things() -> None:
    with pytest.raises(SpecError, match="undeclared network 'nope'"):
        Stack("p", (), (), (Service("a", "img", networks=(NetworkAttachment("nope"),)),))
    with pytest.raises(SpecError, match="undeclared secret 'missing'"):
        Stack("p", (), (), (Service("a", "img", secret_env={"X": SecretEnv("{missing}")}),))
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


def test_secret_env_quotes_only_when_asked() -> None:
    url = SecretEnv("redis://:{pw}@h:6379/0", url_quote=True)
    assert url.resolve({"pw": "a b/@:"}) == "redis://:a%20b%2F%40%3A@h:6379/0"
    assert SecretEnv("{pw}").resolve({"pw": "a b/@:"}) == "a b/@:"
    with pytest.raises(SpecError, match="no value"):
        url.resolve({})


def test_compose_file_has_no_secret_values_and_escapes_dollars(tmp_path: Path) -> None:
    spec = build_stack(StackConfig())
    path = compose.write(spec, tmp_path / "rendered" / "compose.yml")
    text = path.read_text()

    for value in (*SECRETS.values(), "p%24ss%20word", "r%40dis"):
        assert value not in text
    document = yaml.safe_load(text)
    redis = document["services"]["af-redis-1"]
    assert '"$$REDIS_PASSWORD"' in redis["healthcheck"]["test"][1]
    assert redis["environment"]["REDIS_PASSWORD"].startswith(
        "${MA_SECRET_AF_REDIS_1_REDIS_PASSWORD:?"
    )
    # Build contexts are relative to the file, so the rendered file can be moved with the repo.
    api_build = document["services"]["media-analysis-api"]["build"]
    assert (path.parent / api_build["context"]).resolve() == compose.REPO_ROOT
    assert api_build["dockerfile"] == "infra/images/api/Dockerfile"


def test_compose_secret_environment_resolves_every_reference() -> None:
    spec = build_stack(StackConfig())
    variables = compose.secret_environment(spec, SECRETS)
    document = compose.render(spec)
    referenced = {
        value.split(":?")[0].removeprefix("${")
        for service in document["services"].values()
        for value in service.get("environment", {}).values()
        if value.startswith("${")
    }
    assert referenced == set(variables)
    assert variables["MA_SECRET_MEDIA_ANALYSIS_API_DATABASE_URL"] == (
        "postgresql+psycopg://media:p%24ss%20word@af-postgres-1:5432/media_analysis"
    )


def test_external_compose_declares_only_the_api() -> None:
    document = compose.render(build_stack(StackConfig(mode="external")))

    assert set(document["services"]) == {"media-analysis-api"}
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
    with pytest.raises(ConfigError, match="MA_INFRA_REDIS_PASSWORD: is required"):
        secrets_from_env({"MA_INFRA_POSTGRES_PASSWORD": "x", "MA_INFRA_REDIS_PASSWORD": "  "})


def test_up_without_a_password_fails_before_touching_docker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MA_INFRA_POSTGRES_PASSWORD", raising=False)
    monkeypatch.setenv("MA_INFRA_REDIS_PASSWORD", "set")
    with pytest.raises(ConfigError) as error:
        up(engine="compose")
    assert str(error.value) == (
        "configuration setting MA_INFRA_POSTGRES_PASSWORD: is required "
        "(the password of the PostgreSQL user) and is not set"
    )


def test_network_spec_external_flag_round_trips() -> None:
    assert Network("af-network", external=True).external


def test_verify_reports_every_check_failed_when_nothing_runs() -> None:
    token = secrets.token_hex(4)
    config = StackConfig(
        postgres_host=f"absent-pg-{token}",
        redis_host=f"absent-redis-{token}",
        api_name=f"absent-api-{token}",
    )
    console = Console(record=True, width=200)

    results = run_checks(config)

    assert len(results) == 10
    assert not any(result.ok for result in results)
    assert all("absent-" in result.detail for result in results)
    assert report(results, console) == 1
    assert "10 of 10 checks failed" in console.export_text()
