"""The engines' registry, the stack record and the Pulumi engine's pre-flight decisions
(pure functions over what the Pulumi CLI prints: the CLI itself cannot be installed here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra import engines
from infra.config import ConfigError, StackConfig
from infra.engines import EngineKind, record
from infra.engines.pulumi import (
    config_from_values,
    owner_of,
    retained_replacements,
    switch_problem,
)

SERVERS = ("af-postgres-1", "af-redis-1")
URN = "urn:pulumi:dev::media-analysis-kit::docker:index/container:Container::"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "checkout" / "infra-stack.json"
    monkeypatch.setenv("MA_INFRA_STATE_FILE", str(path))
    return path


def test_registry_has_one_engine_per_kind_and_refuses_unknown_names() -> None:
    assert [kind.value for kind in engines.ENGINES] == ["pulumi", "compose", "embedded", "swarm"]
    # swarm only when asked for: never guessed by choose()
    assert [kind.value for kind in engines.AUTOMATIC] == ["pulumi", "compose", "embedded"]
    for kind, engine_type in engines.ENGINES.items():
        assert engines.get(kind.value).kind is kind
        assert engine_type.kind is kind
    with pytest.raises(ConfigError, match="must be pulumi, compose, embedded, swarm"):
        engines.get("swarm-of-bees")


def test_checkout_id_is_made_once_and_outlives_the_record(state: Path) -> None:
    assert record.checkout_owner() is None  # read-only: nothing made
    assert not state.parent.exists()
    owner = record.checkout_owner(create=True)
    assert owner is not None and owner.startswith("checkout:") and len(owner) == 25
    record.save(record.StackRecord(EngineKind.COMPOSE, owner, "media-analysis", StackConfig()))
    record.clear()
    assert record.load() is None
    assert record.checkout_owner(create=True) == owner


def test_record_round_trips_and_tolerates_an_old_or_broken_file(state: Path) -> None:
    config = StackConfig(api_host_port=8123, mode="external")
    written = record.StackRecord(
        EngineKind.COMPOSE, "checkout:ab", "media-analysis-app", config, None, {"x": 1}
    )
    record.save(written)
    assert record.load() == written
    # A record from before owners existed: no owner, the local API under its old key.
    state.write_text(json.dumps({"engine": "embedded", "config": None, "local_api": "http://a"}))
    old = record.load()
    assert old is not None and old.owner is None and old.api_url == "http://a"
    state.write_text("{not json")
    assert record.load() is None
    with pytest.raises(engines.EngineError, match="nothing was started by this checkout"):
        engines.recorded()


def test_switch_to_external_is_refused_only_for_a_stack_that_manages_its_servers() -> None:
    external = StackConfig(mode="external")
    problem = switch_problem({"mode": "managed"}, external)
    assert problem is not None and "\n" not in problem
    assert "af-postgres-1" in problem and "pulumi state delete" in problem
    assert switch_problem({"mode": "external"}, external) is None
    assert switch_problem({}, external) is None  # never deployed
    assert switch_problem({"mode": "managed"}, StackConfig()) is None


def test_retained_servers_the_preview_replaces_are_found_by_urn() -> None:
    preview = {
        "steps": [
            {"op": "replace", "urn": URN + "af-postgres-1"},
            {"op": "update", "urn": URN + "af-redis-1"},
            {"op": "replace", "urn": URN + "media-analysis-api"},
            {"op": "replace", "urn": "urn:pulumi:dev::p::docker:index/volume:Volume::af-redis-1"},
            {"op": "same", "urn": URN + "af-redis-1"},
        ]
    }
    assert retained_replacements(preview, SERVERS) == ["af-postgres-1"]
    assert retained_replacements({}, SERVERS) == []


def test_stack_config_comes_from_pulumi_config_or_the_stack_output() -> None:
    from_config = config_from_values(
        {
            "media-analysis-kit:apiHostPort": {"value": "8081", "secret": False},
            "media-analysis-kit:postgresPassword": {"secret": True},
        }
    )
    assert from_config.api_host_port == 8081
    from_output = config_from_values({"api_host_port": 8082, "mode": "external", "x": 1})
    assert (from_output.api_host_port, from_output.mode) == (8082, "external")
    with pytest.raises(ConfigError):
        config_from_values({"media-analysis-kit:apiHostPort": {"value": "eighty"}})


def test_pulumi_owner_is_project_and_stack() -> None:
    assert owner_of("dev") == "pulumi:media-analysis-kit/dev"
    assert owner_of("acme/dev") == "pulumi:media-analysis-kit/dev"
