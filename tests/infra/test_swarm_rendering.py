"""The swarm rendering of the spec (the stack file ``docker stack deploy`` reads) and the swarm
engine's rules that need no Docker: versioned secrets, placement, what swarm cannot have."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from infra import compose, engines
from infra.config import STACK_SECRETS, ConfigError, StackConfig
from infra.engines import swarm
from infra.engines.swarm import cluster
from infra.stack import STORAGE_CONSTRAINT, build_stack

VALUES = {s.name: f"{s.name}-value-1" for s in STACK_SECRETS}


def _stack_file(config: StackConfig, values: dict[str, str] = VALUES) -> dict:  # type: ignore[type-arg]
    spec = build_stack(config, "checkout:test")
    return compose.render(spec, swarm_secrets=compose.swarm_secret_names(spec, values))


def test_the_stack_file_has_deploy_sections_and_nothing_swarm_ignores() -> None:
    config = StackConfig(target="swarm", api_replicas=3)
    document = _stack_file(config)
    assert document["version"] == "3.9"
    services = document["services"]
    assert list(services) == [
        "af-postgres-1",
        "af-redis-1",
        "media-analysis-api",
        "media-analysis-proxy",
    ]
    for name, service in services.items():
        for ignored in (
            "container_name",
            "build",
            "depends_on",
            "restart",
            "security_opt",
            "tmpfs",
        ):
            assert ignored not in service, (name, ignored)
        assert service["deploy"]["labels"]["io.media-analysis-kit.owner"] == "checkout:test"
        assert service["labels"]["io.media-analysis-kit.owner"] == "checkout:test"
        assert service["deploy"]["update_config"]["failure_action"] == "rollback"
        assert "pids" in service["deploy"]["resources"]["limits"]
    api = services["media-analysis-api"]
    assert api["deploy"]["replicas"] == 3
    assert api["deploy"]["update_config"]["order"] == "start-first"
    assert api["deploy"]["placement"]["constraints"] == [STORAGE_CONSTRAINT]
    assert {"type": "tmpfs", "target": "/tmp", "tmpfs": {"size": 256 << 20}} in api["volumes"]
    for server in ("af-postgres-1", "af-redis-1"):
        assert services[server]["deploy"]["replicas"] == 1
        assert services[server]["deploy"]["update_config"]["order"] == "stop-first"
        assert services[server]["deploy"]["placement"]["constraints"] == [STORAGE_CONSTRAINT]
    proxy = services["media-analysis-proxy"]
    assert proxy["environment"]["PROXY_BACKEND"] == "tasks.media-analysis-api"
    assert proxy["ports"] == [
        {"target": 8000, "published": 8000, "protocol": "tcp", "mode": "host"}
    ]
    assert [s for s in services.values() if "ports" in s] == [proxy]
    network = document["networks"]["af-network"]
    assert (network["driver"], network["attachable"]) == ("overlay", True)


def test_secret_names_follow_their_content() -> None:
    config = StackConfig(target="swarm")
    before = _stack_file(config)["secrets"]
    rotated = _stack_file(config, {**VALUES, "redis_app_password": "rotated"})["secrets"]
    changed = {key for key in before if before[key]["name"] != rotated[key]["name"]}
    # The app password is in the API's redis_url and in Redis's own file: both roll, no other.
    assert changed == {"media_analysis_api_redis_url", "af_redis_1_redis_app_password"}
    for key, entry in before.items():
        assert entry["name"].startswith(f"{key}-") and len(entry["name"]) == len(key) + 13
        assert VALUES["redis_app_password"] not in str(entry)


def test_swarm_settings_that_cannot_hold_are_refused() -> None:
    with pytest.raises(ConfigError, match="monitoring"):
        StackConfig(target="swarm", monitoring=True).validate()
    with pytest.raises(ConfigError, match="target"):
        StackConfig(target="kubernetes").validate()  # type: ignore[arg-type]


def test_choose_never_guesses_swarm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MA_INFRA_ENGINE", raising=False)
    for kind in engines.AUTOMATIC:
        monkeypatch.setattr(engines.ENGINES[kind], "available", lambda self: False)
    monkeypatch.setattr(swarm.SwarmEngine, "available", lambda self: True)
    assert engines.choose().kind is engines.EngineKind.EMBEDDED
    assert engines.choose("swarm").kind is engines.EngineKind.SWARM


def test_a_bridge_network_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "network_driver", lambda name: "bridge")
    for mode in ("managed", "external"):
        config = dataclasses.replace(StackConfig(target="swarm"), mode=mode)
        with pytest.raises(swarm.SwarmError) as refused:
            swarm.check_network(config)
        message = str(refused.value)
        assert "\n" not in message and "bridge" in message and "overlay" in message
        assert "docker network create -d overlay --attachable af-network" in message


def test_the_stack_file_is_written_beside_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MA_INFRA_STATE_FILE", str(tmp_path / "state" / "infra-stack.json"))
    assert swarm.stack_path() == tmp_path / "state" / "swarm-stack.yml"
