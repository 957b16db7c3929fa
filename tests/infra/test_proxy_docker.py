"""The proxy in front of the API replicas, and Prometheus beside them, on the real Docker
engine (CI installs one).

Three API replicas behind HAProxy: requests spread over them; slow and idle clients are
closed by the proxy within its timeouts while normal requests keep answering (and nothing is
left in storage ``tmp/``); ``invoke deploy`` rolls a new image under continuous load with no
failed request; a replica SIGKILLed under load costs no 2xx upload twice. Traffic goes only
to the loopback port the proxy publishes. Destructive for this project's containers and
volumes on the host, like tests/infra/test_docker_stack.py (removed before and after).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from app_patch.db import libpq_url
from app_patch.settings import PROJECT_ROOT
from infra import docker_host, images, proxy, secrets_file, stack_ops
from infra.config import StackConfig, config_to_env, env_key
from infra.engines import StackEndpoints, UpRequest, record
from infra.engines import compose as compose_engine
from infra.loopback import free_port
from infra.progress import Lines
from infra.stack import api_replica_names, build_stack
from tests.infra.test_docker_stack import _passwords, _png

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

INVOKE = Path(sys.prefix) / "bin" / "invoke"


@dataclass
class Proxied:
    config: StackConfig
    passwords: dict[str, str]
    endpoints: StackEndpoints
    figures: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        assert self.endpoints.api_url is not None
        return self.endpoints.api_url

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.passwords["api_key"]}


def _env(stack: Proxied) -> dict[str, str]:
    """The shell of an operator of this stack (its record, config and passwords)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MA_")}
    env.update(config_to_env(stack.config))
    env.update({env_key(name): value for name, value in stack.passwords.items()})
    env.update(
        MA_INFRA_STATE_FILE=str(record.state_file()),
        MA_INFRA_SECRETS_DIR=str(secrets_file.SECRETS_ROOT),
        COLUMNS="120",
    )
    return env


def _invoke(
    args: list[str], env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INVOKE), *args], cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _live(url: str) -> dict[str, str]:
    answer = httpx.get(f"{url}/health/live", timeout=5)
    answer.raise_for_status()
    return dict(answer.json())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    state = tmp_path_factory.mktemp("proxy-state") / "infra-stack.json"
    secrets_root = tmp_path_factory.mktemp("proxy-secrets")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MA_INFRA_STATE_FILE", str(state))
        patch.setattr(secrets_file, "SECRETS_ROOT", secrets_root)
        docker_host.require_engine()
        images.seed_base_image(progress=Lines())
        config = StackConfig(
            api_host_port=free_port(),
            api_replicas=3,
            proxy_request_timeout_s=3,
            proxy_client_timeout_s=5,
            deploy_timeout_s=90,
            drain_timeout_s=15,
            monitoring=True,
        )
        compose_engine.stop(build_stack(config), state.parent / "reset.yml", remove_volumes=True)
        images.build_all(build_stack(config), progress=Lines())
        passwords = _passwords()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MA_INFRA_")}
        env.update(config_to_env(config))
        env.update({env_key(name): value for name, value in passwords.items()})
        started = time.monotonic()
        endpoints = compose_engine.ComposeEngine(env).up(UpRequest(build=False), Lines())
        stack_ops.migrate(endpoints)
        stack_ops.wait_api_ready(endpoints)
        deployed = Proxied(config, passwords, endpoints)
        deployed.figures["up_3_replicas_s"] = round(time.monotonic() - started, 1)
        try:
            yield deployed
        finally:
            print(f"proxy figures: {deployed.figures}")
            found = record.load()
            if found is not None:
                engine, recorded, _ = stack_ops.down_plan()
                stack_ops.down(engine, recorded, volumes=True, progress=Lines())
            compose_engine.stop(
                build_stack(config), state.parent / "reset.yml", remove_volumes=True
            )


def test_the_proxy_spreads_requests_over_every_replica(stack: Proxied) -> None:
    replicas = api_replica_names(stack.config)
    up = proxy.wait_for(
        stack.config.proxy_name, lambda seen: sum(s.up for s in seen) == 3, 60, "3 replicas UP"
    )
    addresses = {docker_host.container_ip(n, stack.config.network_name) for n in replicas}
    assert {s.address for s in up if s.up} == addresses
    instances = Counter(_live(stack.url)["instance"] for _ in range(60))
    assert len(instances) == 3, instances
    verify = _invoke(["verify"], _env(stack))
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


def test_slow_and_idle_clients_are_closed_while_others_are_served(stack: Proxied) -> None:
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


@dataclass
class Load:
    """Uploads (each with its own Idempotency-Key) and reads against the proxy until stopped;
    every outcome counted."""

    url: str
    headers: dict[str, str]
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    uploaded: dict[str, str] = field(default_factory=dict)  # key -> job id
    builds: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, worker: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers=self.headers) as api:
            i = 0
            while not self.stop.is_set() and i < 5000:
                i += 1
                key = f"load-{worker}-{i}-{uuid.uuid4().hex[:8]}"
                try:
                    if i % 2:
                        body = _png((worker * 30 % 256, i % 256, 77), (24 + i % 7, 16))
                        answer = api.post(
                            "/analyses",
                            files={"file": (f"{key}.png", body, "image/png")},
                            data={"analysis_type": "basic"},
                            headers={"Idempotency-Key": key},
                        )
                        if answer.status_code in (200, 201, 202):
                            self.uploaded[key] = str(answer.json()["id"])
                    else:
                        answer = api.get("/health/live")
                        if answer.status_code == 200:
                            self.builds[str(answer.json().get("build"))] += 1
                except httpx.HTTPError as exc:
                    self.failed.append(f"{type(exc).__name__}")
                    continue
                if answer.status_code >= 300:
                    self.failed.append(f"HTTP {answer.status_code}")
                else:
                    self.ok += 1

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self.run, args=(w,), daemon=True) for w in range(4)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def _jobs_once(stack: Proxied, load: Load) -> None:
    """Every 2xx upload is in the database exactly once, under the id it was answered."""
    with psycopg.connect(libpq_url(stack.endpoints.database_url), connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT idempotency_key, id::text FROM analysis_jobs WHERE idempotency_key = ANY(%s)",
            (list(load.uploaded),),
        ).fetchall()
    keys = Counter(key for key, _ in rows)
    assert set(keys) == set(load.uploaded) and set(keys.values()) == {1}
    assert {key: job for key, job in rows} == load.uploaded


def test_deploy_under_load_drops_no_request_and_serves_the_new_image(stack: Proxied) -> None:
    stamp = f"v2-{uuid.uuid4().hex[:6]}"
    spec = build_stack(stack.config)
    images.build_all(spec, Lines(), only={stack.config.api_name}, extra_args={"BUILD_STAMP": stamp})
    started = time.monotonic()
    with Load(stack.url, stack.headers) as load:
        time.sleep(2)
        deployed = _invoke(["deploy", "--no-build"], _env(stack), timeout=900)
        time.sleep(2)
    stack.figures["deploy_s"] = round(time.monotonic() - started - 4, 1)
    stack.figures["deploy_load"] = {"ok": load.ok, "failed": len(load.failed)}
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert load.failed == [], Counter(load.failed)
    assert load.ok > 50
    builds = Counter(_live(stack.url)["build"] for _ in range(30))
    assert set(builds) == {stamp}, builds
    _jobs_once(stack, load)
    names = {c.name for c in docker_host.client().containers.list(all=True)}
    assert not {n for n in names if n.endswith("-next")}, "surge containers removed"


def test_deploy_of_an_image_that_never_gets_healthy_keeps_the_old_one(stack: Proxied) -> None:
    before = _live(stack.url)["build"]
    api = build_stack(stack.config).service(stack.config.api_name)
    assert api.build is not None
    broken = PROJECT_ROOT / "infra" / "images" / "api" / "Dockerfile"
    # The same image, with a command that never answers: its healthcheck never passes.
    sick = subprocess.run(
        ["docker", "build", "-q", "-t", api.image, "-f", "-",
         str(PROJECT_ROOT / "infra" / "images")],
        input=f"FROM {api.image}\nCMD [\"sleep\", \"3600\"]\n", capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert sick.returncode == 0, sick.stderr
    try:
        env = {**_env(stack), "MA_INFRA_DEPLOY_TIMEOUT_S": "15"}
        failed = _invoke(["deploy", "--no-build", "--timeout", "15"], env)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        lines = [x for x in (failed.stdout + failed.stderr).splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and "never became healthy" in lines[0], failed.stdout
        assert {_live(stack.url)["build"] for _ in range(20)} == {before}
        names = {c.name for c in docker_host.client().containers.list(all=True)}
        assert not {n for n in names if n.endswith("-next")}
    finally:
        images.build_all(
            build_stack(stack.config), Lines(), only={stack.config.api_name},
            extra_args={"BUILD_STAMP": before},
        )  # fmt: skip
        assert broken.exists()


def test_a_replica_killed_under_load_costs_no_upload_twice(stack: Proxied) -> None:
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
