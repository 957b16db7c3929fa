"""One spec, two renderings: Pulumi resources and the compose file agree on everything."""

from __future__ import annotations

import re
from typing import Any

import pytest

from infra import compose
from infra.config import StackConfig, config_from_source, pulumi_key
from infra.stack import build_stack
from tests.infra.pulumi_harness import PASSWORDS, VOLUME, env_of, run_program, unwrap

SECRETS = {
    "postgres_password": PASSWORDS["postgresPassword"],
    "redis_password": PASSWORDS["redisPassword"],
}
_VARIABLE = re.compile(r"^\$\{([A-Z0-9_]+):\?[^}]*\}$")


def _compose_env(environment: dict[str, str], variables: dict[str, str]) -> dict[str, str]:
    resolved = {}
    for key, value in environment.items():
        match = _VARIABLE.match(value)
        resolved[key] = variables[match.group(1)] if match else compose.unescape(value)
    return resolved


def _pulumi_view(inputs: dict[str, Any]) -> dict[str, Any]:
    check = inputs["healthcheck"]
    return {
        "image": inputs["image"],
        "env": env_of(inputs),
        "networks": {n["name"]: n["aliases"] for n in inputs["networksAdvanced"]},
        "volumes": {
            (v["volumeName"], v["containerPath"], v["readOnly"]) for v in inputs["volumes"]
        },
        "ports": [
            f"{p['ip']}:{int(p['external'])}:{int(p['internal'])}/{p['protocol']}"
            for p in inputs.get("ports") or []
        ],
        "healthcheck": (
            check["tests"],
            check["interval"],
            check["timeout"],
            check["retries"],
            check["startPeriod"],
        ),
        "restart": inputs["restart"],
        "user": inputs.get("user"),
        "memory_mb": inputs.get("memory"),
        "cpus": float(inputs["cpus"]) if inputs.get("cpus") else None,
        "labels": {label["label"]: label["value"] for label in unwrap(inputs.get("labels") or [])},
    }


def _compose_view(service: dict[str, Any], variables: dict[str, str]) -> dict[str, Any]:
    check = service["healthcheck"]
    return {
        "image": service["image"],
        "env": _compose_env(service.get("environment", {}), variables),
        "networks": {name: n["aliases"] for name, n in service["networks"].items()},
        "volumes": {
            (v["source"], v["target"], v.get("read_only", False)) for v in service["volumes"]
        },
        "ports": service.get("ports", []),
        "healthcheck": (
            [compose.unescape(part) for part in check["test"]],
            check["interval"],
            check["timeout"],
            check["retries"],
            check["start_period"],
        ),
        "restart": service["restart"],
        "user": service.get("user"),
        "memory_mb": int(service["mem_limit"].removesuffix("m"))
        if "mem_limit" in service
        else None,
        "cpus": service.get("cpus"),
        "labels": service.get("labels", {}),
    }


@pytest.mark.parametrize(
    "settings",
    [
        {"mode": "managed"},
        {"mode": "external"},
        {"mode": "managed", "postgresHostPort": "15432", "apiHostIp": "0.0.0.0", "apiCpus": "0.5"},
    ],
    ids=["managed", "external", "managed-published"],
)
def test_pulumi_and_compose_renderings_agree(settings: dict[str, str]) -> None:
    spec = build_stack(config_from_source(settings.get, pulumi_key))
    run = run_program(settings)
    document = compose.render(spec)
    variables = compose.secret_environment(spec, SECRETS)

    # Services: the same set, and each one identical in every rendered aspect.
    assert set(run.containers) == set(document["services"]) == {s.name for s in spec.services}
    for service in spec.services:
        in_pulumi = _pulumi_view(run.containers[service.name])
        in_compose = _compose_view(document["services"][service.name], variables)
        assert in_pulumi == in_compose, service.name
        assert in_pulumi["env"] == service.resolved_env(SECRETS)

    # Dependencies: compose waits for health where Pulumi orders after the container.
    for service in spec.services:
        compose_deps = set(document["services"][service.name].get("depends_on", {}))
        pulumi_deps = {
            urn.rsplit("::", 1)[1]
            for urn in run.dependencies[service.name]
            if "docker:index/container:Container" in urn
        }
        assert compose_deps == pulumi_deps, service.name

    # Volumes: the same ones created; external ones in neither.
    created = {name for name, v in document.get("volumes", {}).items() if not v.get("external")}
    assert created == set(run.of_type(VOLUME)) == {v.name for v in spec.volumes if not v.external}

    # Network: created by both, or referenced by name by both.
    network = spec.networks[0]
    assert document["networks"][network.name]["name"] == network.name
    if network.external:
        assert document["networks"][network.name]["external"] is True
        assert [call.args for call in run.calls] == [{"name": network.name}]
        assert not run.of_type("docker:index/network:Network")
    else:
        assert "external" not in document["networks"][network.name]
        assert set(run.of_type("docker:index/network:Network")) == {network.name}


def test_default_config_is_what_the_pulumi_program_uses() -> None:
    assert config_from_source(lambda key: None, pulumi_key) == StackConfig()
