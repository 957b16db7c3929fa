"""The stack on Docker Swarm (``invoke up --engine swarm``), on the real engine of this machine.

The module puts the engine in swarm mode only if it is not in one already, and leaves it as
it found it (``docker swarm leave --force`` only when it initialised it; a storage-node label
it added to a swarm it found is removed). Traffic goes only to the loopback port the proxy
publishes through the ingress. Like the other docker tests it removes this project's
volumes before and after.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import psycopg
import pytest

from app_patch.db import libpq_conninfo
from infra import docker_host, images
from infra.config import StackConfig
from infra.engines import swarm
from infra.loopback import free_port
from infra.progress import Lines
from infra.stack import STORAGE_NODE_LABEL, build_stack
from tests.infra.support import (
    build_api_image,
    error_lines,
    invoke,
    operator_env,
    passwords,
    sick_api_image,
)
from tests.infra.traffic import Load, around_load, live, png

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

VOLUMES = ("pg-data", "redis-data", "media-storage")


@dataclass
class Swarmed:
    config: StackConfig
    passwords: dict[str, str]
    env: dict[str, str]
    figures: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.api_host_port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.passwords["api_key"]}


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=180, check=check
    )


# A swarm converges slowly: its tasks get a longer bound than the compose tests' default.
_invoke = partial(invoke, timeout=900)


def _remove_volumes() -> None:
    for name in VOLUMES:
        _docker("volume", "rm", name, check=False)


@pytest.fixture(scope="module")
def swarm_mode() -> Iterator[None]:
    state, _ = swarm.swarm_state()
    initialised = state != "active"
    if initialised:
        _docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    node = _docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    labelled_before = (
        STORAGE_NODE_LABEL
        in _docker("node", "inspect", node, "--format", "{{json .Spec.Labels}}").stdout
    )
    try:
        yield
    finally:
        if initialised:
            _docker("swarm", "leave", "--force", check=False)
            _docker("network", "rm", "docker_gwbridge", check=False)  # swarm init made it
        elif not labelled_before:
            _docker("node", "update", "--label-rm", STORAGE_NODE_LABEL, node, check=False)


@pytest.fixture(scope="module")
def stack(swarm_mode: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarmed]:
    state = tmp_path_factory.mktemp("swarm-state") / "infra-stack.json"
    secrets_root = tmp_path_factory.mktemp("swarm-secrets")
    docker_host.require_engine()
    images.seed_base_image(progress=Lines())
    config = StackConfig(
        target="swarm", api_host_port=free_port(), api_replicas=3, deploy_timeout_s=60
    )
    _remove_volumes()
    images.build_all(build_stack(config), progress=Lines())
    fresh = passwords()
    env = operator_env(
        fresh,
        config,
        MA_INFRA_STATE_FILE=str(state),
        MA_INFRA_SECRETS_DIR=str(secrets_root),
        COLUMNS="160",
    )
    swarmed = Swarmed(config, fresh, env)
    try:
        yield swarmed
    finally:
        print(f"swarm figures: {json.dumps(swarmed.figures)}")
        if state.exists():
            _invoke(["down", "--volumes", "--yes"], env)
        _docker("stack", "rm", "media-analysis", check=False)
        _docker("stack", "rm", "media-analysis-app", check=False)
        time.sleep(5)
        _docker("network", "rm", config.network_name, check=False)
        _remove_volumes()


def test_up_verify_replicas_answer_migrated_once(stack: Swarmed) -> None:
    started = time.monotonic()
    up = _invoke(["up", "--engine", "swarm", "--no-build"], stack.env)
    stack.figures["up_s"] = round(time.monotonic() - started, 1)
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-2000:]
    assert "labelled this one-node swarm's node" in up.stdout or "media-analysis.storage" in str(
        _docker("node", "ls", "--filter", f"node.label={STORAGE_NODE_LABEL}=true").stdout
    )
    assert "all " in up.stdout and "checks passed" in up.stdout, up.stdout[-4000:]
    verify = _invoke(["verify"], stack.env)
    assert verify.returncode == 0, verify.stdout[-4000:]
    instances = Counter(live(stack.url)["instance"] for _ in range(60))
    stack.figures["instances_seen"] = len(instances)
    assert len(instances) >= 2, instances
    again = _invoke(["migrate"], stack.env)
    assert again.returncode == 0, again.stdout + again.stderr
    with psycopg.connect(libpq_conninfo(_owner_url(stack)), connect_timeout=10) as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)


def _owner_url(stack: Swarmed) -> str:
    spec = build_stack(stack.config)
    address = swarm.server_address(spec, stack.config.postgres_host)
    from infra.engines.containers import database_url

    return database_url(
        stack.config, stack.config.postgres_owner_user,
        stack.passwords["postgres_owner_password"], address,
    )  # fmt: skip


def test_no_password_in_any_service_spec(stack: Swarmed) -> None:
    spec = build_stack(stack.config)
    values = [v for v in stack.passwords.values()]
    for service in spec.services:
        text = _docker("service", "inspect", swarm.full_name(spec, service.name)).stdout
        assert text.strip().startswith("["), service.name
        leaked = [name for name, v in stack.passwords.items() if v in text]
        assert not leaked, (service.name, leaked)
    assert values


def _running(stack: Swarmed, service: str) -> int:
    spec = build_stack(stack.config)
    listing = _docker(
        "service", "ps", "--filter", "desired-state=running", "--format", "{{.CurrentState}}",
        swarm.full_name(spec, service),
    ).stdout  # fmt: skip
    return sum(1 for line in listing.splitlines() if line.startswith("Running"))


def test_a_task_killed_under_load_is_replaced(stack: Swarmed) -> None:
    spec = build_stack(stack.config)
    victims = swarm.task_containers(spec, stack.config.api_name)
    assert len(victims) == 3
    with Load(stack.url, stack.headers) as load:
        time.sleep(2)
        before = len(load.failed)
        _docker("kill", "-s", "KILL", str(victims[0]["Id"]))
        killed = time.monotonic()
        replaced = None
        while time.monotonic() - killed < 90:
            ids = {c["Id"] for c in swarm.task_containers(spec, stack.config.api_name)}
            healthy = _running(stack, stack.config.api_name)
            if len(ids) == 3 and victims[0]["Id"] not in ids and healthy == 3:
                replaced = round(time.monotonic() - killed, 1)
                break
            time.sleep(0.5)
        time.sleep(3)
    stack.figures["kill"] = {
        "ok": load.ok,
        "failed": len(load.failed) - before,
        "failures": dict(Counter(load.failed[before:])),
        "replaced_after_s": replaced,
    }
    assert replaced is not None, "swarm did not replace the killed task within 90 s"
    assert load.ok > 50


def test_deploy_under_load_rolls_every_task(stack: Swarmed) -> None:
    stamp = f"swarm-{uuid.uuid4().hex[:6]}"
    build_api_image(stack.config, stamp)
    deploy = partial(_invoke, ["deploy", "--no-build"], stack.env)
    deployed, load, deploy_s = around_load(stack.url, stack.headers, deploy)
    stack.figures["deploy_s"] = round(deploy_s, 1)
    stack.figures["deploy_load"] = {
        "ok": load.ok, "failed": len(load.failed), "failures": dict(Counter(load.failed)),
    }  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-2000:]
    assert load.ok > 50
    builds = Counter(live(stack.url)["build"] for _ in range(30))
    assert set(builds) == {stamp}, builds
    stack.figures["stamp"] = stamp


def test_deploy_of_a_sick_image_is_rolled_back(stack: Swarmed) -> None:
    before = live(stack.url)["build"]
    with sick_api_image(stack.config, before):
        started = time.monotonic()
        with Load(stack.url, stack.headers) as load:
            failed = _invoke(["deploy", "--no-build", "--timeout", "20"], stack.env)
        stack.figures["sick_deploy"] = {
            "s": round(time.monotonic() - started, 1), "ok": load.ok, "failed": len(load.failed),
        }  # fmt: skip
        assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr
        lines = error_lines(failed)
        assert len(lines) == 1 and "rolled" in lines[0], failed.stdout[-3000:]
        assert {live(stack.url)["build"] for _ in range(20)} == {before}
        assert _running(stack, stack.config.api_name) == 3


def test_upload_down_up_keeps_history_and_files_then_down_volumes_removes_them(
    stack: Swarmed,
) -> None:
    body = png((1, 2, 3), (33, 21))
    with httpx.Client(base_url=stack.url, timeout=30, headers=stack.headers) as api:
        answer = api.post("/analyses", files={"file": ("kept.png", body, "image/png")})
        assert answer.status_code == 201, answer.text
        job = answer.json()
    down = _invoke(["down"], stack.env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "volumes kept" in down.stdout
    started = time.monotonic()
    up = _invoke(["up", "--engine", "swarm", "--no-build", "--no-verify"], stack.env)
    stack.figures["up_again_s"] = round(time.monotonic() - started, 1)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-2000:]
    with httpx.Client(base_url=stack.url, timeout=30, headers=stack.headers) as api:
        again = api.get(f"/analyses/{job['id']}")
        assert again.status_code == 200, again.text
        sha = again.json()["media"]["sha256"] if again.json().get("media") else None
        if sha:
            content = api.get(f"/media/{sha}/content")
            assert content.status_code == 200 and content.content == body
    gone = _invoke(["down", "--volumes", "--yes"], stack.env)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    left = _docker("volume", "ls", "-q").stdout.split()
    assert not set(VOLUMES) & set(left), left


def test_external_mode_refuses_a_bridge_network(stack: Swarmed) -> None:
    assert not Path(stack.env["MA_INFRA_STATE_FILE"]).exists()
    _docker("network", "create", stack.config.network_name)  # a bridge: the one-host situation
    try:
        env = {**stack.env, "MA_INFRA_MODE": "external"}
        refused = _invoke(["up", "--engine", "swarm", "--no-build"], env, timeout=120)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        lines = error_lines(refused)
        assert len(lines) == 1 and "bridge" in lines[0] and "overlay" in lines[0], lines
        listed = _docker("service", "ls", "--format", "{{.Name}}").stdout.split()
        assert not [n for n in listed if n.startswith("media-analysis")], listed
        secrets = _docker("secret", "ls", "--format", "{{.Name}}").stdout.split()
        assert not [s for s in secrets if s.startswith(("media_analysis", "af_"))], secrets
        stack.figures["bridge_refusal"] = lines[0]
    finally:
        _docker("network", "rm", stack.config.network_name, check=False)
