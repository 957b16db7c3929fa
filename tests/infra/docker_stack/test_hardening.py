"""The real container stack on the local Docker engine (CI installs one: no skipping), as it
comes up: the rendered compose file is accepted, the stack is healthy, the container checks
pass (and fail on a container that is not hardened), the Pulumi delivery paths work on this
engine, and the trust boundary holds (no password in ``docker inspect``, hardened containers,
the API's database role cannot CREATE or DROP). The stack is the package's (conftest.py).
"""

from __future__ import annotations

import dataclasses
import io
import json
import secrets
import subprocess
import tarfile
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

import docker
import psycopg
import pytest

from app_patch.db import libpq_conninfo
from app_patch.db_roles import role_problems
from infra import compose, docker_host
from infra.config import StackConfig
from infra.engines import EngineKind
from infra.engines import compose as compose_engine
from infra.pulumi_program import _PidsLimitProvider
from infra.stack import build_stack
from infra.verify import exposure, hardening, report, run_check, run_checks
from tests.infra.support import Deployed

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


def test_rendered_compose_file_is_accepted_by_the_compose_cli(tmp_path: Path) -> None:
    for mode in ("managed", "external"):
        spec = build_stack(StackConfig(mode=mode))
        path = compose.write(spec, tmp_path / mode / "compose.yml")
        compose_engine.validate(spec, path)


def test_stack_comes_up_healthy(stack: Deployed) -> None:
    assert stack.endpoints.engine is EngineKind.COMPOSE
    assert stack.endpoints.api_url == f"http://127.0.0.1:{stack.config.api_host_port}"
    for name in (stack.config.postgres_host, stack.config.redis_host, stack.config.api_name):
        assert docker_host.container_state(name).healthy, name
    assert stack.timings["up_to_ready_s"] < 300


def test_verify_checks_are_green(stack: Deployed) -> None:
    results = run_checks(stack.config)

    failed = [f"{r.name}: {r.detail}" for r in results if not r.ok]
    assert not failed, "\n".join(failed)
    assert len(results) == 26  # servers, 1 API replica, the proxy
    assert report(results) == 0


def test_verify_fails_on_a_container_that_is_not_hardened(stack: Deployed) -> None:
    """The same checks against a plain container (default capabilities, writable root, no
    pids limit, no no-new-privileges, a URL with a password in its env): each is reported."""
    probe = f"ma-weak-probe-{secrets.token_hex(3)}"
    leaked = f"leak-{secrets.token_hex(6)}"
    subprocess.run(
        ["docker", "run", "-d", "--name", probe, "--entrypoint", "sleep",
         "-e", f"DATABASE_URL=postgresql://u:{leaked}@h/db", stack.config.api_image, "120"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    try:
        api = build_stack(stack.config).service(stack.config.api_name)
        weak = dataclasses.replace(api, name=probe)
        hardened = run_check("hardened", lambda: hardening.hardened(weak))
        exposed = run_check("exposed", lambda: exposure.no_secret_exposed(probe, (probe,)))
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", probe], capture_output=True, timeout=60)

    assert not hardened.ok and not exposed.ok
    for missing in (
        "CapDrop",
        "no-new-privileges is not set",
        "PidsLimit is unlimited",
        "root filesystem is writable",
        "no tmpfs",
        "NoNewPrivs",
        "may still gain",
        "writing to / succeeded",
    ):
        assert missing in hardened.detail, hardened.detail
    assert "env DATABASE_URL" in exposed.detail, exposed.detail
    assert leaked not in exposed.detail  # the report names the variable, never the value


def test_pulumi_delivery_paths_work_on_this_engine(stack: Deployed) -> None:
    """What the Pulumi program relies on, against the real engine (no Pulumi CLI here): an
    upload (PUT archive at "/", as the provider does) is refused by a read-only container but
    lands in a volume through a never-started loader, owned and moded as the header says; and
    the PidsLimit resource's update call sets HostConfig.PidsLimit."""
    token = secrets.token_hex(3)
    volume, loader, reader = (
        f"ma-probe-vol-{token}",
        f"ma-probe-loader-{token}",
        f"ma-probe-ro-{token}",
    )
    image = stack.config.api_image
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        entry = tarfile.TarInfo("/run/secrets/db_url")
        entry.size, entry.mode, entry.uid, entry.gid = 5, 0o400, 10001, 10001
        tar.addfile(entry, io.BytesIO(b"probe"))
    with closing(docker_host.client()) as client:
        try:
            client.volumes.create(volume)
            read_only = client.containers.create(
                image, ["sleep", "60"], name=reader, read_only=True,
                volumes={volume: {"bind": "/run/secrets", "mode": "ro"}},
            )  # fmt: skip
            with pytest.raises(docker.errors.APIError, match="read-only"):
                client.api.put_archive(str(read_only.id), "/", archive.getvalue())
            filler = client.containers.create(
                image, ["true"], name=loader, volumes={volume: {"bind": "/run/secrets"}}
            )
            assert client.api.put_archive(str(filler.id), "/", archive.getvalue())
            read_only.start()
            code, output = read_only.exec_run(["cat", "/run/secrets/db_url"])
            assert (code, output) == (0, b"probe")
            code, output = read_only.exec_run(["stat", "-c", "%u:%g %a", "/run/secrets/db_url"])
            assert isinstance(output, bytes)
            assert output.decode().strip() == "10001:10001 400"

            _PidsLimitProvider().create({"container_id": read_only.id, "pids_limit": 77})
            assert docker_host.inspect(reader)["HostConfig"]["PidsLimit"] == 77
        finally:
            for name in (reader, loader):
                subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, timeout=60)
            subprocess.run(["docker", "volume", "rm", volume], capture_output=True, timeout=60)


def test_docker_inspect_shows_no_password(stack: Deployed) -> None:
    names = (stack.config.postgres_host, stack.config.redis_host, stack.config.api_name)
    values = set(stack.passwords.values())
    values |= {quote(value, safe="") for value in values}
    for name in names:
        attrs = docker_host.inspect(name)
        shown = json.dumps(
            {
                "Env": attrs["Config"]["Env"],
                "Cmd": attrs["Config"]["Cmd"],
                "Entrypoint": attrs["Config"]["Entrypoint"],
                "Args": attrs["Args"],
                "Labels": attrs["Config"]["Labels"],
            }
        )
        for value in values:
            assert value not in shown, name
        assert not any("PASSWORD=" in item or "_URL=" in item for item in attrs["Config"]["Env"]), (
            attrs["Config"]["Env"]
        )
    # ...and the API's own root cannot read its secrets (they belong to uid 10001, no caps).
    code, output = docker_host.exec_run(stack.config.api_name, ["cat", "/run/secrets/db_url"], "0")
    assert code != 0 and "Permission denied" in output


def test_containers_are_hardened_as_inspect_shows(stack: Deployed) -> None:
    expected_caps = {
        stack.config.postgres_host: ["SETGID", "SETUID"],
        stack.config.redis_host: ["SETGID", "SETUID"],
        stack.config.api_name: [],
    }
    for name, caps in expected_caps.items():
        host_config = docker_host.inspect(name)["HostConfig"]
        assert host_config["CapDrop"] == ["ALL"], name
        assert sorted(host_config["CapAdd"] or []) == caps, name
        assert "no-new-privileges:true" in host_config["SecurityOpt"], name
        assert host_config["PidsLimit"] > 0, name
        assert host_config["ReadonlyRootfs"] is (name == stack.config.api_name), name
    code, output = docker_host.exec_run(stack.config.api_name, ["touch", "/etc/probe"])
    assert code != 0 and "Read-only file system" in output


def test_api_database_role_cannot_create_or_drop(stack: Deployed) -> None:
    app_url = stack.endpoints.app_database_url
    assert app_url is not None and "media_app" in app_url
    assert role_problems(app_url) == []
    with psycopg.connect(libpq_conninfo(app_url), connect_timeout=10) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert row == (False,)
        for statement in ("CREATE TABLE ma_probe (id int)", "DROP TABLE analysis_jobs"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
        assert conn.execute("SELECT count(*) FROM analysis_jobs").fetchone() is not None
    # Every table belongs to the owner role, none to the bootstrap superuser.
    with psycopg.connect(libpq_conninfo(stack.endpoints.database_url), connect_timeout=10) as conn:
        owners = conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    assert owners == [(stack.config.postgres_owner_user,)]
