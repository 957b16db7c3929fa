"""Taking the package's stack down and sharing it: a plain down leaves no containers and keeps
the volumes; a second checkout in external mode leaves the shared servers alone, and one that
does not own the stack is refused; a stopped API fails verify; a hand-made network is adopted
and the data survives down until a confirmed ``down --volumes``. Runs last in the package:
it takes the shared stack down and up again.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from app_patch.settings import PROJECT_ROOT
from infra import docker_host
from infra.config import StackConfig
from infra.engines import compose as compose_engine
from infra.engines import record
from infra.verify import report, run_checks
from tests.infra.support import (
    INVOKE,
    Deployed,
    clean_slate,
    compose_down,
    compose_up,
    invoke,
    one_error_line,
    operator_env,
)
from tests.infra.traffic import TERMINAL, png

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

PROJECT_LABEL = "com.docker.compose.project=media-analysis"


def test_down_leaves_no_containers(stack: Deployed) -> None:
    compose_down()

    listed = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label={PROJECT_LABEL}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert listed.stdout.strip() == ""
    for name in (stack.config.postgres_host, stack.config.redis_host, stack.config.api_name):
        assert docker_host.container_state(name).status == "missing"
    # Data volumes are kept by a plain down (the fixture removes them afterwards).
    volumes = subprocess.run(
        ["docker", "volume", "ls", "--format", "{{.Name}}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert {"pg-data", "redis-data", "media-storage"} <= set(volumes)


def test_external_mode_leaves_the_shared_servers_alone(stack: Deployed, tmp_path: Path) -> None:
    """Shared servers from a managed deployment of one checkout; the API alone in external
    mode from a second checkout (its own record and owner): the servers are not recreated on
    its up nor removed on its down. The first checkout cannot switch itself to external (that
    would remove the servers it manages): refused in one line."""
    pg, redis, api = stack.config.postgres_host, stack.config.redis_host, stack.config.api_name
    managed = StackConfig(api_host_port=stack.config.api_host_port)
    compose_up(managed, stack.passwords)  # the schema is at head already: the migration is a no-op
    first_checkout = record.state_file()
    assert all(r.ok for r in run_checks(managed)), report(run_checks(managed))
    shared_before = {name: docker_host.inspect(name)["Id"] for name in (pg, redis)}

    external = StackConfig(mode="external", api_host_port=stack.config.api_host_port)
    switch = invoke(["up", "--no-build", "--no-verify"], operator_env(stack.passwords, external))
    assert switch.returncode == 1, switch.stdout + switch.stderr
    line = one_error_line(switch)
    assert "refusing to switch to mode=external" in line and "invoke down" in line, line
    assert {name: docker_host.inspect(name)["Id"] for name in (pg, redis)} == shared_before

    # The first checkout's API and proxy make way (a hand-over of the servers only).
    proxy_name = stack.config.proxy_name
    subprocess.run(["docker", "rm", "-f", api, proxy_name], check=True, capture_output=True,
                   timeout=60)  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MA_INFRA_STATE_FILE", str(tmp_path / "second" / "infra-stack.json"))
        endpoints = compose_up(external, stack.passwords)
        results = run_checks(external)
        assert all(r.ok for r in results), report(results)
        assert {name: docker_host.inspect(name)["Id"] for name in (pg, redis)} == shared_before
        assert endpoints.api_url is not None
        assert httpx.get(f"{endpoints.api_url}/health/ready", timeout=10).status_code == 200
        compose_down()  # the second checkout's record: external, its API only
    assert docker_host.container_state(api).status == "missing"
    for name in (pg, redis):
        assert docker_host.container_state(name).healthy, name
    assert docker_host.network_exists(stack.config.network_name)

    assert record.state_file() == first_checkout
    compose_down(volumes=True)
    for name in (pg, redis, api):
        assert docker_host.container_state(name).status == "missing"


def test_a_second_checkout_refuses_to_touch_the_first_checkouts_stack(
    stack: Deployed, tmp_path: Path
) -> None:
    """Another checkout (its own record dir, so its own id) on the same host: with no record,
    down/verify/db-status/retention say nothing was started; with a record of the same stack
    but its own owner, down and verify refuse naming the containers and their owner. The
    stack keeps running."""
    config = StackConfig(api_host_port=stack.config.api_host_port)
    if record.load() is None:
        compose_up(config, stack.passwords)
    ids = {n: docker_host.inspect(n)["Id"] for n in (config.postgres_host, config.api_name)}
    owner = record.load().owner  # type: ignore[union-attr]
    second = tmp_path / "second-checkout" / "infra-stack.json"
    env = operator_env(stack.passwords, MA_INFRA_STATE_FILE=str(second))
    for args in (["down"], ["verify"], ["db-status"], ["retention", "--dry-run"]):
        proc = invoke(args, env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert one_error_line(proc) == (
            "error: nothing was started by this checkout: run invoke up first"
        ), args

    second.parent.mkdir(parents=True, exist_ok=True)
    (second.parent / "checkout-id").write_text("0123456789abcdef\n", encoding="ascii")
    forged = json.loads(record.state_file().read_text(encoding="utf-8"))
    forged["owner"] = "checkout:0123456789abcdef"
    second.write_text(json.dumps(forged), encoding="utf-8")
    for args in (["down"], ["verify"], ["down", "--volumes", "--yes"]):
        proc = invoke(args, env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        line = one_error_line(proc)
        assert "not started by this checkout" in line and config.postgres_host in line, line
        assert f"owner {owner}" in line, line
    assert {n: docker_host.inspect(n)["Id"] for n in ids} == ids
    assert docker_host.container_state(config.api_name).healthy

    up = invoke(["up", "--no-build", "--engine", "compose"], env)
    assert up.returncode == 1, up.stdout + up.stderr
    assert "refusing to start" in one_error_line(up)
    assert {n: docker_host.inspect(n)["Id"] for n in ids} == ids


def test_verify_fails_when_the_api_is_stopped(stack: Deployed) -> None:
    """`invoke verify` against this checkout's stack with its API container stopped: the
    check fails (exit non-zero); `invoke up` brings it back."""
    config = StackConfig(api_host_port=stack.config.api_host_port)
    if record.load() is None:
        compose_up(config, stack.passwords)
    env = operator_env(stack.passwords)
    subprocess.run(["docker", "stop", config.api_name], check=True, capture_output=True,
                   timeout=60)  # fmt: skip
    try:
        proc = invoke(["verify"], env)
        assert proc.returncode != 0, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
    finally:
        compose_up(config, stack.passwords)


def _network_id(name: str) -> str | None:
    found = subprocess.run(
        ["docker", "network", "inspect", "--format", "{{.Id}}", name],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return found.stdout.strip() if found.returncode == 0 else None


def _volume_names() -> set[str]:
    listed = subprocess.run(
        ["docker", "volume", "ls", "--format", "{{.Name}}"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return set(listed.stdout.split())


def _invoke_on_a_terminal(
    args: list[str], env: dict[str, str], answer: str
) -> subprocess.CompletedProcess[str]:
    """``invoke`` with a pseudo-terminal as stdin, ``answer`` typed into it."""
    controller, terminal = os.openpty()
    try:
        os.write(controller, answer.encode())
        return subprocess.run(
            [str(INVOKE), *args], cwd=PROJECT_ROOT, env=env, stdin=terminal,
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        os.close(controller)
        os.close(terminal)


def test_hand_made_network_is_adopted_and_data_survives_down_until_confirmed_down_volumes(
    stack: Deployed,
) -> None:
    """A hand-made `af-network` (no compose labels): a managed up with the compose CLI renders
    it `external: true` and uses it, no down removes it. 10 uploads survive `invoke down` and
    an up; `invoke down --volumes` without a terminal or --yes refuses in one line and deletes
    nothing; with --yes it deletes the three volumes (and still not the network)."""
    data_volumes = {"pg-data", "redis-data", "media-storage"}
    network = stack.config.network_name
    env = operator_env(stack.passwords)
    started = time.monotonic()
    compose_down(volumes=True)
    clean_slate(stack.config)
    assert _network_id(network) is None and not data_volumes & _volume_names()
    subprocess.run(["docker", "network", "create", network], check=True, capture_output=True,
                   timeout=60)  # fmt: skip
    hand_made = _network_id(network)
    try:
        config = StackConfig(api_host_port=stack.config.api_host_port)
        endpoints = compose_up(config, stack.passwords)
        rendered = yaml.safe_load(compose_engine.rendered_path().read_text(encoding="utf-8"))
        assert rendered["networks"] == {network: {"name": network, "external": True}}
        assert _network_id(network) == hand_made
        attached = docker_host.inspect(config.api_name)["NetworkSettings"]["Networks"]
        assert set(attached) == {network}

        assert endpoints.api_url is not None
        uploads: dict[str, bytes] = {}
        jobs: dict[str, str] = {}
        with httpx.Client(base_url=endpoints.api_url, timeout=30, headers=stack.headers) as api:
            for i in range(10):
                body = png((i * 20, 90, 255 - i * 20), (40 + i, 30))
                created = api.post(
                    "/analyses",
                    files={"file": (f"keep-{i}.png", body, "image/png")},
                    data={"analysis_type": "basic"},
                )
                assert created.status_code == 201, created.text
                jobs[str(created.json()["id"])] = hashlib.sha256(body).hexdigest()
                uploads[hashlib.sha256(body).hexdigest()] = body
            deadline = time.monotonic() + 120
            pending = set(jobs)
            while pending and time.monotonic() < deadline:
                states = {j: api.get(f"/analyses/{j}").json().get("status") for j in pending}
                pending = {j for j, status in states.items() if status not in TERMINAL}
                time.sleep(0.5)
            assert not pending, pending

        down = invoke(["down"], env)
        assert down.returncode == 0, down.stdout + down.stderr
        assert "volumes kept: pg-data, redis-data, media-storage" in down.stdout, down.stdout
        assert docker_host.container_state(config.api_name).status == "missing"
        assert data_volumes <= _volume_names()
        assert _network_id(network) == hand_made

        endpoints = compose_up(config, stack.passwords)
        assert endpoints.api_url is not None
        with httpx.Client(base_url=endpoints.api_url, timeout=30, headers=stack.headers) as api:
            for job_id, sha in jobs.items():
                job = api.get(f"/analyses/{job_id}")
                assert job.status_code == 200 and job.json()["status"] == "succeeded", job.text
                content = api.get(f"/media/{sha}/content")
                assert content.status_code == 200 and content.content == uploads[sha], sha

        refused = invoke(["down", "--volumes"], env)  # stdin is not a terminal
        assert refused.returncode == 1, refused.stdout + refused.stderr
        line = one_error_line(refused)
        assert [x for x in (refused.stdout + refused.stderr).splitlines() if x.strip()] == [line]
        assert "will delete volumes pg-data, redis-data, media-storage" in line, line
        assert "--yes" in line, line
        assert data_volumes <= _volume_names()
        assert docker_host.container_state(config.api_name).healthy

        declined = _invoke_on_a_terminal(["down", "--volumes"], env, "no\n")
        assert declined.returncode == 1, declined.stdout + declined.stderr
        assert "will delete volumes pg-data, redis-data, media-storage" in declined.stdout
        assert declined.stderr.strip() == "error: not confirmed: nothing stopped or deleted"
        assert data_volumes <= _volume_names()
        assert docker_host.container_state(config.api_name).healthy

        confirmed = invoke(["down", "--volumes", "--yes"], env)
        assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
        assert "will delete volumes pg-data, redis-data, media-storage" in confirmed.stdout
        assert not data_volumes & _volume_names()
        assert _network_id(network) == hand_made
    finally:
        compose_down(volumes=True)
        clean_slate(stack.config)
        subprocess.run(["docker", "network", "rm", network], capture_output=True, timeout=60)
    stack.timings["adopt_and_down_volumes_s"] = time.monotonic() - started
    print(f"adoption + down/up + down --volumes: {stack.timings['adopt_and_down_volumes_s']:.1f}s")
