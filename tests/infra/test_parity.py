"""One spec, two renderings: Pulumi resources and the compose file agree on everything,
secret files (content, owner, mode) and hardening included."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from infra import compose, secrets_file
from infra.config import STACK_SECRETS, StackConfig, config_from_source, pulumi_key
from infra.pulumi_resources import SECRETS_REVISION_LABEL
from infra.stack import build_stack
from tests.infra.pulumi_harness import (
    PASSWORDS,
    PIDS_LIMIT,
    VOLUME,
    env_of,
    run_program,
    secret_files_of,
    unwrap,
)

SECRETS = {secret.name: PASSWORDS[secret.setting] for secret in STACK_SECRETS}


def _compose_files(
    service: dict[str, Any], document: dict[str, Any], base_dir: Path
) -> dict[str, tuple[str, int, int, int]]:
    """``target -> (content, uid, gid, mode)`` of the files compose mounts (read back from
    what ``secrets_file`` wrote where the rendered file points)."""
    files = {}
    for entry in service.get("secrets", []):
        host = (base_dir / document["secrets"][entry["source"]]["file"]).resolve()
        status = host.stat()
        target = f"/run/secrets/{entry['target']}"
        files[target] = (host.read_text(), status.st_uid, status.st_gid, status.st_mode & 0o777)
    return files


def _pulumi_view(
    inputs: dict[str, Any],
    files: dict[str, Any],
    pids: int | None,
    image_tags: dict[str, str],
) -> dict[str, Any]:
    check = inputs["healthcheck"]
    capabilities = inputs.get("capabilities") or {}
    return {
        "image": image_tags.get(inputs["image"], inputs["image"]),
        "env": env_of(inputs),
        "files": files,
        "cap_drop": capabilities.get("drops", []),
        "cap_add": sorted(capabilities.get("adds", [])),
        "security_opt": inputs.get("securityOpts", []),
        "read_only": bool(inputs.get("readOnly")),
        "tmpfs": inputs.get("tmpfs") or {},
        "pids": pids,
        "networks": {n["name"]: n["aliases"] for n in inputs["networksAdvanced"]},
        "volumes": {
            (v["volumeName"], v["containerPath"], v["readOnly"])
            for v in inputs["volumes"]
            if v["containerPath"] != "/run/secrets"  # the loader's volume: see "files"
        },
        "ports": [
            f"{p['ip']}:{int(p['external'])}:{int(p['internal'])}/{p['protocol']}"
            for p in inputs.get("ports") or []
        ],
        "healthcheck": _pulumi_healthcheck(check),
        "restart": inputs["restart"],
        "user": inputs.get("user"),
        "memory_mb": inputs.get("memory"),
        "cpus": float(inputs["cpus"]) if inputs.get("cpus") else None,
        "labels": {
            label["label"]: label["value"]
            for label in unwrap(inputs.get("labels") or [])
            if label["label"] != SECRETS_REVISION_LABEL  # Pulumi's replacement trigger
        },
    }


def _pulumi_healthcheck(check: dict[str, Any]) -> tuple[Any, ...]:
    """A provider healthcheck (container or service) as the fields the renderings share."""
    return (
        check["tests"],
        check["interval"],
        check["timeout"],
        check["retries"],
        check["startPeriod"],
    )


def _compose_view(service: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
    check = service["healthcheck"]
    return {
        "image": service["image"],
        "env": {k: compose.unescape(v) for k, v in service.get("environment", {}).items()},
        "files": files,
        "cap_drop": service.get("cap_drop", []),
        "cap_add": sorted(service.get("cap_add", [])),
        "security_opt": service.get("security_opt", []),
        "read_only": bool(service.get("read_only")),
        "tmpfs": dict(entry.split(":", 1) for entry in service.get("tmpfs", [])),
        "pids": service.get("pids_limit"),
        "networks": {name: n["aliases"] for name, n in service["networks"].items()},
        "volumes": {
            (v["source"], v["target"], v.get("read_only", False))
            for v in service.get("volumes", [])
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
        {"mode": "managed", "apiReplicas": "3", "monitoring": "true"},
    ],
    ids=["managed", "external", "managed-published", "replicas-monitoring"],
)
def test_pulumi_and_compose_renderings_agree(settings: dict[str, str], tmp_path: Path) -> None:
    # The same owner label as the program's (``pulumi:<project>/<stack>`` under the mocks).
    spec = build_stack(
        config_from_source(settings.get, pulumi_key), "pulumi:media-analysis-kit/test"
    )
    passwords = {s.setting: PASSWORDS[s.setting] for s in spec.secrets}
    run = run_program(settings, passwords)
    base_dir = tmp_path / "rendered"
    base_dir.mkdir()
    document = compose.render(spec, base_dir, secrets_root=tmp_path / "secrets")
    secrets_file.write_secret_files(spec, SECRETS, tmp_path / "secrets")
    pids = {
        inputs["container_id"]: inputs["pids_limit"] for inputs in run.of_type(PIDS_LIMIT).values()
    }

    # Services: the same set, and each one identical in every rendered aspect.
    assert set(document["services"]) == {s.name for s in spec.services}
    assert set(run.containers) == {s.name for s in spec.services} | {
        f"{s.name}-secrets" for s in spec.services if s.hardening.read_only and s.secret_files
    }
    for service in spec.services:
        in_pulumi = _pulumi_view(
            run.containers[service.name],
            secret_files_of(run, service.name),
            pids.get(f"{service.name}-id"),
            run.image_tags,
        )
        rendered = document["services"][service.name]
        in_compose = _compose_view(rendered, _compose_files(rendered, document, base_dir))
        assert in_pulumi == in_compose, service.name
        assert in_pulumi["env"] == dict(service.env)
        assert {path: f[0] for path, f in in_pulumi["files"].items()} == service.resolved_files(
            SECRETS
        )
        if os.geteuid() == 0:  # else compose's files are 0444 by design (secrets_file)
            assert {f[1:] for f in in_pulumi["files"].values()} <= {
                (f.uid, f.gid, f.mode) for f in service.secret_files
            }

    # Dependencies: compose waits for health where Pulumi orders after the container.
    for service in spec.services:
        compose_deps = set(document["services"][service.name].get("depends_on", {}))
        pulumi_deps = {
            urn.rsplit("::", 1)[1]
            for urn in run.dependencies[service.name]
            if "docker:index/container:Container" in urn and not urn.endswith("-secrets")
        }
        assert compose_deps == pulumi_deps, service.name

    # Volumes: the same ones created; external ones in neither.
    created = {name for name, v in document.get("volumes", {}).items() if not v.get("external")}
    loaders = {name for name in run.of_type(VOLUME) if name.endswith("-secrets")}
    assert created == set(run.of_type(VOLUME)) - loaders
    assert created == {v.name for v in spec.volumes if not v.external}

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


SERVICE = "docker:index/service:Service"
SWARM_SECRET = "docker:index/secret:Secret"


def _pulumi_swarm_view(inputs: dict[str, Any], run: Any) -> dict[str, Any]:
    task = unwrap(inputs["taskSpec"])
    spec = task["containerSpec"]
    by_id = {f"{name}-id": unwrap(args) for name, args in run.of_type(SWARM_SECRET).items()}
    check = spec["healthcheck"]
    mounts = spec.get("mounts") or []
    limits = (task.get("resources") or {}).get("limits") or {}
    update, rollback = unwrap(inputs["updateConfig"]), unwrap(inputs["rollbackConfig"])
    return {
        "image": run.image_tags.get(spec["image"], spec["image"]),
        "env": spec.get("env") or {},
        "secrets": {
            f"/run/secrets/{s['fileName'].rsplit('/', 1)[-1]}": (
                by_id[s["secretId"]]["name"],
                base64.b64decode(by_id[s["secretId"]]["data"]).decode(),
                s["fileUid"],
                s["fileGid"],
                int(s["fileMode"]),
            )
            for s in spec.get("secrets") or []
        },
        "cap_drop": spec.get("capDrops", []),
        "cap_add": sorted(spec.get("capAdds") or []),
        "read_only": bool(spec.get("readOnly")),
        "tmpfs": {
            m["target"]: m["tmpfsOptions"]["sizeBytes"] for m in mounts if m["type"] == "tmpfs"
        },
        "volumes": {
            (m["source"], m["target"], bool(m.get("readOnly")))
            for m in mounts
            if m["type"] == "volume"
        },
        "networks": {n["name"]: n["aliases"] for n in task["networksAdvanceds"]},
        "ports": [
            (p["targetPort"], p["publishedPort"], p["protocol"], p["publishMode"])
            for p in (inputs.get("endpointSpec") or {}).get("ports") or []
        ],
        "healthcheck": _pulumi_healthcheck(check),
        "user": spec.get("user"),
        "memory": limits.get("memoryBytes"),
        "nano_cpus": limits.get("nanoCpus"),
        "labels": {x["label"]: x["value"] for x in spec.get("labels") or []},
        "service_labels": {x["label"]: x["value"] for x in unwrap(inputs.get("labels") or [])},
        "replicas": inputs["mode"]["replicated"]["replicas"],
        "constraints": (task.get("placement") or {}).get("constraints", []),
        "update": (update["order"], update["failureAction"], update["monitor"]),
        "rollback": (rollback["order"], rollback["failureAction"]),
        "restart": task["restartPolicy"]["condition"],
        "stop_grace": spec["stopGracePeriod"],
    }


def _stack_file_view(
    rendered: dict[str, Any], document: dict[str, Any], base_dir: Path
) -> dict[str, Any]:
    check = rendered["healthcheck"]
    deploy = rendered["deploy"]
    mounts = rendered.get("volumes", [])
    limits = deploy.get("resources", {}).get("limits", {})
    top = document["secrets"]
    return {
        "image": rendered["image"],
        "env": {k: compose.unescape(v) for k, v in rendered.get("environment", {}).items()},
        "secrets": {
            f"/run/secrets/{s['target']}": (
                top[s["source"]]["name"],
                (base_dir / top[s["source"]]["file"]).read_text(),
                s["uid"],
                s["gid"],
                s["mode"],
            )
            for s in rendered.get("secrets", [])
        },
        "cap_drop": rendered.get("cap_drop", []),
        "cap_add": sorted(rendered.get("cap_add", [])),
        "read_only": bool(rendered.get("read_only")),
        "tmpfs": {m["target"]: m["tmpfs"]["size"] for m in mounts if m["type"] == "tmpfs"},
        "volumes": {
            (m["source"], m["target"], m.get("read_only", False))
            for m in mounts
            if m["type"] == "volume"
        },
        "networks": {name: n["aliases"] for name, n in rendered["networks"].items()},
        "ports": [
            (p["target"], p["published"], p["protocol"], p["mode"])
            for p in rendered.get("ports", [])
        ],
        "healthcheck": (
            [compose.unescape(part) for part in check["test"]],
            check["interval"],
            check["timeout"],
            check["retries"],
            check["start_period"],
        ),
        "user": rendered.get("user"),
        "memory": int(limits["memory"].removesuffix("M")) << 20 if "memory" in limits else None,
        "nano_cpus": int(float(limits["cpus"]) * 1e9) if "cpus" in limits else None,
        "labels": rendered.get("labels", {}),
        "service_labels": deploy["labels"],
        "replicas": deploy["replicas"],
        "constraints": deploy.get("placement", {}).get("constraints", []),
        "update": (
            deploy["update_config"]["order"],
            deploy["update_config"]["failure_action"],
            deploy["update_config"]["monitor"],
        ),
        "rollback": (
            deploy["rollback_config"]["order"],
            deploy["rollback_config"]["failure_action"],
        ),
        "restart": deploy["restart_policy"]["condition"],
        "stop_grace": rendered["stop_grace_period"],
    }


@pytest.mark.parametrize(
    "settings",
    [
        {"target": "swarm", "apiReplicas": "3"},
        {"target": "swarm", "mode": "external"},
    ],
    ids=["swarm-managed", "swarm-external"],
)
def test_pulumi_swarm_target_and_stack_file_agree(settings: dict[str, str], tmp_path: Path) -> None:
    """The third rendering: Pulumi's swarm target (docker.Service, docker.Secret, an overlay
    docker.Network) and the stack file ``docker stack deploy`` reads agree on every service,
    secret (name, content, owner, mode), volume and network. The one known gap: the pids
    limit, which pulumi-docker's Service cannot express (the stack file has it)."""
    config = config_from_source(settings.get, pulumi_key)
    spec = build_stack(config, "pulumi:media-analysis-kit/test")
    passwords = {s.setting: PASSWORDS[s.setting] for s in spec.secrets}
    values = {s.name: PASSWORDS[s.setting] for s in spec.secrets}
    run = run_program(settings, passwords)
    base_dir = tmp_path / "rendered"
    base_dir.mkdir()
    names = compose.swarm_secret_names(spec, values)
    document = compose.render(spec, base_dir, tmp_path / "secrets", swarm_secrets=names)
    secrets_file.write_secret_files(spec, values, tmp_path / "secrets")

    services = run.of_type(SERVICE)
    assert set(services) == set(document["services"]) == {s.name for s in spec.services}
    assert not run.containers
    for service in spec.services:
        rendered = document["services"][service.name]
        in_pulumi = _pulumi_swarm_view(services[service.name], run)
        in_stack = _stack_file_view(rendered, document, base_dir)
        assert in_pulumi == in_stack, service.name
        assert rendered["deploy"]["resources"]["limits"]["pids"] == service.limits.pids
        assert "pids" not in str(services[service.name]["taskSpec"].get("resources"))
    if config.mode == "managed":
        assert document["services"][config.api_name]["deploy"]["replicas"] == 3
    assert set(run.of_type(SWARM_SECRET)) == set(document["secrets"])

    network = spec.networks[0]
    if network.external:
        assert document["networks"][network.name] == {"name": network.name, "external": True}
        assert not run.of_type("docker:index/network:Network")
    else:
        inputs = run.of_type("docker:index/network:Network")[network.name]
        assert (inputs["driver"], inputs["attachable"]) == ("overlay", True)
        assert document["networks"][network.name]["driver"] == "overlay"
        assert document["networks"][network.name]["attachable"] is True
    created = {name for name, v in document.get("volumes", {}).items() if not v.get("external")}
    assert created == set(run.of_type(VOLUME))
