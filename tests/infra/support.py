"""Driving a real stack from the docker tests as an operator does (no tests here): a stack
with its own record and secret files, fresh passwords, up and down through the compose
engine, the operator's shell and ``invoke`` in a subprocess."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app_patch.settings import PROJECT_ROOT
from infra import docker_host, images, secrets_file, stack_ops
from infra.config import STACK_SECRETS, StackConfig, config_to_env, env_key
from infra.engines import StackEndpoints, UpRequest, record
from infra.engines import compose as compose_engine
from infra.loopback import free_port
from infra.progress import Lines
from infra.stack import build_stack

INVOKE = Path(sys.prefix) / "bin" / "invoke"


@dataclass
class Deployed:
    """A stack a module brought up: what it was given, where it answers, what tests report
    (``timings``, ``figures``) and hand on to later tests (``shared``)."""

    config: StackConfig
    passwords: dict[str, str]
    endpoints: StackEndpoints
    timings: dict[str, float] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        assert self.endpoints.api_url is not None
        return self.endpoints.api_url

    @property
    def headers(self) -> dict[str, str]:
        """Every route but health needs the stack's API key (the API holds only its digest)."""
        return {"X-API-Key": self.passwords["api_key"]}


def passwords() -> dict[str, str]:
    """Fresh values for every stack secret, with characters URLs and shells must quote."""
    return {s.name: f"{s.setting[:8]}-{secrets.token_hex(6)} $/:@x" for s in STACK_SECRETS}


def operator_env(
    passwords: dict[str, str], config: StackConfig | None = None, **extra: str
) -> dict[str, str]:
    """An operator's shell for this stack: its state file and passwords (and ``config`` as
    MA_INFRA_* values if given), no MA_ store settings (so the tasks must find the store
    themselves)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MA_") and k not in {"DATABASE_URL", "REDIS_URL"}}  # fmt: skip
    if config is not None:
        env.update(config_to_env(config))
    env.update({env_key(name): value for name, value in passwords.items()})
    env.update(
        MA_INFRA_STATE_FILE=str(record.state_file()),
        MA_INFRA_SECRETS_DIR=str(secrets_file.SECRETS_ROOT),
        COLUMNS="120",
    )
    env.update(extra)
    return env


def invoke(
    args: list[str], env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INVOKE), *args], cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The run ended with exactly one ``error:`` line, last, and no traceback."""
    output = proc.stdout + proc.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert "Traceback" not in output, output
    assert len(errors) == 1, output
    assert lines[-1] == errors[0], output
    return errors[0]


def _stack_env(config: StackConfig, passwords: dict[str, str]) -> dict[str, str]:
    """The environment `invoke up` reads: ``config`` and ``passwords`` as MA_INFRA_* values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MA_INFRA_")}
    env.update(config_to_env(config))
    env.update({env_key(name): value for name, value in passwords.items()})
    env["MA_INFRA_STATE_FILE"] = str(record.state_file())
    return env


def compose_up(config: StackConfig, passwords: dict[str, str]) -> StackEndpoints:
    """What `invoke up` does with the compose engine (without building and verifying)."""
    engine = compose_engine.ComposeEngine(_stack_env(config, passwords))
    endpoints = engine.up(UpRequest(build=False), Lines())
    stack_ops.migrate(endpoints)
    stack_ops.wait_api_ready(endpoints)
    return endpoints


def compose_down(volumes: bool = False) -> None:
    """What `invoke down [--volumes --yes]` does: the recorded stack, if any."""
    if record.load() is None:
        return
    engine, found, _ = stack_ops.down_plan()
    stack_ops.down(engine, found, volumes=volumes, progress=Lines())


def clean_slate(config: StackConfig) -> None:
    """Remove this project's containers and volumes whoever started them (a test's reset)."""
    spec = build_stack(config)
    compose_engine.stop(spec, record.state_dir() / "reset-compose.yml", remove_volumes=True)
    record.clear()


@contextmanager
def deployed_stack(
    tmp_path_factory: pytest.TempPathFactory, name: str, **config: Any
) -> Iterator[Deployed]:
    """A compose stack of ``StackConfig(**config)`` on a free API port, with its own record
    and secret files, built and brought up from a clean slate; removed with its volumes at
    the end. Destructive for this project's containers and volumes on the host."""
    state_file = tmp_path_factory.mktemp(f"{name}-state") / "infra-stack.json"
    secrets_root = tmp_path_factory.mktemp(f"{name}-secrets")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MA_INFRA_STATE_FILE", str(state_file))
        # The containers' secret files too: not the checkout's .data/secrets.
        patch.setattr(secrets_file, "SECRETS_ROOT", secrets_root)
        timings: dict[str, float] = {}
        started = time.monotonic()
        docker_host.require_engine()
        images.seed_base_image(progress=Lines())
        timings["engine_and_base_image_s"] = time.monotonic() - started

        stack_config = StackConfig(api_host_port=free_port(), **config)
        # A clean slate: volumes of an earlier run were initialised with other passwords.
        clean_slate(stack_config)

        started = time.monotonic()
        for built in images.build_all(build_stack(stack_config), progress=Lines()):
            timings[f"build {built.tag}_s"] = built.seconds
        timings["build_all_s"] = time.monotonic() - started

        fresh = passwords()
        started = time.monotonic()
        endpoints = compose_up(stack_config, fresh)
        timings["up_to_ready_s"] = time.monotonic() - started
        try:
            yield Deployed(stack_config, fresh, endpoints, timings)
        finally:
            compose_down(volumes=True)
            clean_slate(stack_config)


@contextmanager
def sick_api_image(config: StackConfig, build_stamp: str) -> Iterator[None]:
    """The API image retagged with a command that never answers (its healthcheck never
    passes); rebuilt with ``build_stamp`` at the end."""
    api = build_stack(config).service(config.api_name)
    sick = subprocess.run(
        ["docker", "build", "-q", "-t", api.image, "-f", "-",
         str(PROJECT_ROOT / "infra" / "images")],
        input=f"FROM {api.image}\nCMD [\"sleep\", \"3600\"]\n", capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert sick.returncode == 0, sick.stderr
    try:
        yield
    finally:
        build_api_image(config, build_stamp)


def build_api_image(config: StackConfig, build_stamp: str) -> None:
    """The API image built again, answering ``build_stamp`` as its build on /health/live."""
    images.build_all(
        build_stack(config),
        Lines(),
        only={config.api_name},
        extra_args={"BUILD_STAMP": build_stamp},
    )
