"""The proxy in front of the API replicas, and Prometheus beside them, on the real Docker
engine (CI installs one).

Three API replicas behind HAProxy: requests spread over them; slow and idle clients are
closed by the proxy within its timeouts while normal requests keep answering (and nothing is
left in storage ``tmp/``); ``invoke deploy`` rolls a new image under continuous load with no
failed request; a replica SIGKILLed under load costs no 2xx upload twice. Traffic goes only
to the loopback port the proxy publishes. Destructive for this project's containers and
volumes on the host, like the other docker tests (removed before and after).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from functools import partial

import httpx
import psycopg
import pytest

from app_patch.db import libpq_conninfo
from app_patch.settings import PROJECT_ROOT
from infra import docker_host, proxy
from infra.stack import api_replica_names, build_stack
from tests.infra.support import (
    Deployed,
    build_api_image,
    deployed_stack,
    error_lines,
    invoke,
    operator_env,
    sick_api_image,
)
from tests.infra.traffic import Load, around_load, live

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    with deployed_stack(
        tmp_path_factory,
        "proxy",
        api_replicas=3,
        proxy_request_timeout_s=3,
        proxy_client_timeout_s=5,
        deploy_timeout_s=90,
        drain_timeout_s=15,
        monitoring=True,
    ) as deployed:
        deployed.figures["up_3_replicas_s"] = round(deployed.timings["up_to_ready_s"], 1)
        try:
            yield deployed
        finally:
            print(f"proxy figures: {deployed.figures}")


def test_the_proxy_spreads_requests_over_every_replica(stack: Deployed) -> None:
    replicas = api_replica_names(stack.config)
    up = proxy.wait_for(
        stack.config.proxy_name, lambda seen: sum(s.up for s in seen) == 3, 60, "3 replicas UP"
    )
    addresses = {docker_host.container_ip(n, stack.config.network_name) for n in replicas}
    assert {s.address for s in up if s.up} == addresses
    instances = Counter(live(stack.url)["instance"] for _ in range(60))
    assert len(instances) == 3, instances
    verify = invoke(["verify"], operator_env(stack.passwords, stack.config), timeout=600)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "routes to every API replica" in verify.stdout
    # --monitoring: Prometheus scrapes each replica (with the API key) and loaded the rules.
    assert "scrapes every API replica" in verify.stdout
    assert "loaded the alert rules" in verify.stdout


def _idle(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    return sock


def _stalled_upload(port: int, key: str) -> socket.socket:
    """Headers of a 1 MB multipart upload, then a first trickle of its body."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        "POST /analyses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-API-Key: {key}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
        "Content-Length: 1048576\r\n\r\n--x\r\n"
    )
    sock.sendall(head.encode())
    return sock


def _closed_within(sock: socket.socket, deadline: float) -> tuple[bool, bytes]:
    """Whether the peer closed the connection before ``deadline`` (whatever it answered)."""
    answer = b""
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return True, answer
        if not chunk:
            return True, answer
        answer += chunk
    return False, answer


def test_slow_and_idle_clients_are_closed_while_others_are_served(stack: Deployed) -> None:
    port = stack.config.api_host_port
    idle = [_idle(port) for _ in range(200)]
    stalled = [_stalled_upload(port, stack.passwords["api_key"]) for _ in range(30)]
    started = time.monotonic()
    stop = threading.Event()

    def trickle() -> None:  # 100 bytes every 2 s, as the slow uploads the issue observed
        while not stop.wait(2):
            for sock in stalled:
                try:
                    sock.sendall(b"a" * 100)
                except OSError:
                    continue

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    served = 0
    try:
        with httpx.Client(base_url=stack.url, timeout=10, headers=stack.headers) as api:
            while time.monotonic() - started < 4:
                assert api.get("/analyses", params={"limit": 1}).status_code == 200
                served += 1
        limit = started + stack.config.proxy_request_timeout_s + 6
        closed = [_closed_within(sock, limit) for sock in idle + stalled]
    finally:
        stop.set()
        feeder.join(timeout=5)
        for sock in idle + stalled:
            sock.close()
    open_left = [i for i, (done, _) in enumerate(closed) if not done]
    assert not open_left, f"{len(open_left)} connections still open"
    answered = Counter(ans.split(b"\r\n", 1)[0] for _, ans in closed[200:])
    assert all(b"408" in line for line in answered), answered
    assert served > 0
    code, listing = docker_host.exec_run(
        stack.config.api_name, ["sh", "-c", "ls -A /opt/services/media-analysis/storage/tmp"]
    )
    assert code == 0 and listing.strip() == "", listing
    stack.figures["slow_clients_closed_after_s"] = round(time.monotonic() - started, 1)
    stack.figures["normal_requests_meanwhile"] = served


def _jobs_once(stack: Deployed, load: Load) -> None:
    """Every 2xx upload is in the database exactly once, under the id it was answered."""
    with psycopg.connect(libpq_conninfo(stack.endpoints.database_url), connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT idempotency_key, id::text FROM analysis_jobs WHERE idempotency_key = ANY(%s)",
            (list(load.uploaded),),
        ).fetchall()
    keys = Counter(key for key, _ in rows)
    assert set(keys) == set(load.uploaded) and set(keys.values()) == {1}
    assert {key: job for key, job in rows} == load.uploaded


def test_deploy_under_load_drops_no_request_and_serves_the_new_image(stack: Deployed) -> None:
    stamp = f"v2-{uuid.uuid4().hex[:6]}"
    build_api_image(stack.config, stamp)
    env = operator_env(stack.passwords, stack.config)
    deploy = partial(invoke, ["deploy", "--no-build"], env, timeout=900)
    deployed, load, deploy_s = around_load(stack.url, stack.headers, deploy)
    stack.figures["deploy_s"] = round(deploy_s, 1)
    stack.figures["deploy_load"] = {"ok": load.ok, "failed": len(load.failed)}
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert load.failed == [], Counter(load.failed)
    assert load.ok > 50
    builds = Counter(live(stack.url)["build"] for _ in range(30))
    assert set(builds) == {stamp}, builds
    _jobs_once(stack, load)
    names = {c.name or "" for c in docker_host.client().containers.list(all=True)}
    assert not {n for n in names if n.endswith("-next")}, "surge containers removed"


def test_deploy_of_an_image_that_never_gets_healthy_keeps_the_old_one(stack: Deployed) -> None:
    before = live(stack.url)["build"]
    api = build_stack(stack.config).service(stack.config.api_name)
    assert api.build is not None
    broken = PROJECT_ROOT / "infra" / "images" / "api" / "Dockerfile"
    # The same image, with a command that never answers: its healthcheck never passes.
    try:
        with sick_api_image(stack.config, before):
            env = operator_env(stack.passwords, stack.config, MA_INFRA_DEPLOY_TIMEOUT_S="15")
            failed = invoke(["deploy", "--no-build", "--timeout", "15"], env, timeout=600)
            assert failed.returncode == 1, failed.stdout + failed.stderr
            lines = error_lines(failed)
            assert len(lines) == 1 and "never became healthy" in lines[0], failed.stdout
            assert {live(stack.url)["build"] for _ in range(20)} == {before}
            names = {c.name or "" for c in docker_host.client().containers.list(all=True)}
            assert not {n for n in names if n.endswith("-next")}
    finally:
        assert broken.exists()


def test_a_replica_killed_under_load_costs_no_upload_twice(stack: Deployed) -> None:
    """SIGKILL one replica under load: once the proxy has marked it down no request fails,
    and every 2xx upload is stored exactly once (the load sends Idempotency-Keys, so a retry
    of a request the dead replica had committed is answered with the same job)."""
    victim = f"{stack.config.api_name}-2"
    address = docker_host.container_ip(victim, stack.config.network_name)
    with Load(stack.url, stack.headers) as load:
        time.sleep(2)
        failed_before = len(load.failed)
        subprocess.run(["docker", "kill", "-s", "KILL", victim], check=True,
                       capture_output=True, timeout=60)  # fmt: skip
        killed_at = time.monotonic()
        proxy.wait_for(
            stack.config.proxy_name,
            lambda seen: not any(s.address == address and s.up for s in seen),
            30,
            "the proxy marking the killed replica down",
            poll_s=0.2,
        )
        marked_after = time.monotonic() - killed_at
        marked = len(load.failed)
        time.sleep(5)
    stack.figures["kill"] = {
        "ok": load.ok,
        "failed_before_marked_down": marked - failed_before,
        "failed_after_marked_down": len(load.failed) - marked,
        "marked_down_after_s": round(marked_after, 1),
    }
    assert load.failed[marked:] == [], Counter(load.failed[marked:])
    _jobs_once(stack, load)
    # `docker kill` counts as a manual stop: the restart policy leaves it down. Start it again.
    subprocess.run(["docker", "start", victim], check=True, capture_output=True, timeout=60)
    docker_host.wait_healthy([victim], timeout_s=120)
