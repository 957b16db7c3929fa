"""Backup and restore drill on the real compose stack (local Docker engine), as an operator
runs it: 20 mixed uploads, ``invoke backup``, ``invoke down --volumes --yes``, ``invoke up``,
``invoke restore``; every row and byte identical, the restored media served by the API (also
after an API restart), and retention accepting the restored store. Then the same stack's
servers shared with a second checkout in external mode: its backup, and its restore with
``--force``.

Destructive for this project's containers and volumes on the host, like the other docker
tests (``tests/infra/support.py``).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from infra import docker_host
from infra.config import StackConfig
from infra.engines import EngineKind, containers, record
from infra.stack import STORAGE_ROOT, build_stack
from tests.db_fingerprint import fingerprint
from tests.infra.support import (
    Deployed,
    compose_down,
    compose_up,
    deployed_stack,
    invoke,
    operator_env,
)
from tests.infra.traffic import png

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

N_UPLOADS = 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    with deployed_stack(tmp_path_factory, "backup") as deployed:
        yield deployed


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 32 + seed), (30, seed * 11 % 256, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _wav(seed: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(bytes((i * (seed + 3)) % 251 for i in range(8000)))
    return buffer.getvalue()


def _mixed(i: int) -> tuple[str, bytes, str]:
    kind = i % 4
    if kind == 0:
        return f"p{i}.png", png((i * 9 % 256, 40, 90), (32 + i, 24)), "image/png"
    if kind == 1:
        return f"j{i}.jpg", _jpeg(i), "image/jpeg"
    if kind == 2:
        return f"w{i}.wav", _wav(i), "audio/wav"
    return f"t{i}.txt", f"text upload {i}\n".encode() * (i + 1), "text/plain"


_HASH_STORE = f"""
import hashlib, json, os
root = {STORAGE_ROOT!r}
found = {{}}
for area in ("uploads", "artifacts"):
    for dirpath, _dirs, files in os.walk(os.path.join(root, area)):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
print(json.dumps(found))
"""


def _store_hashes(config: StackConfig) -> dict[str, str]:
    """sha256 of every stored file, read inside the API container (where the volume is)."""
    code, output = docker_host.exec_run(config.api_name, ["python", "-c", _HASH_STORE], "10001")
    assert code == 0, output
    loaded: dict[str, str] = json.loads(output.strip().splitlines()[-1])
    return loaded


def _sets(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith("ma-backup"))


def _ok(args: list[str], env: dict[str, str]) -> tuple[str, float]:
    started = time.monotonic()
    done = invoke(args, env)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, elapsed


def test_backup_down_volumes_up_restore_is_identical(stack: Deployed, tmp_path: Path) -> None:
    assert stack.endpoints.api_url is not None
    uploads: dict[str, bytes] = {}
    with httpx.Client(base_url=stack.endpoints.api_url, headers=stack.headers, timeout=60) as c:
        for i in range(N_UPLOADS):
            name, body, ctype = _mixed(i)
            answer = c.post("/analyses", files={"file": (name, body, ctype)},
                            data={"analysis_type": "auto"})  # fmt: skip
            assert answer.status_code == 201, answer.text
            uploads[hashlib.sha256(body).hexdigest()] = body
    assert len(uploads) == N_UPLOADS
    rows = fingerprint(stack.endpoints.database_url)
    assert rows["analysis_jobs"][0] == N_UPLOADS and rows["media_files"][0] == N_UPLOADS
    files = _store_hashes(stack.config)
    assert sorted(files.values()) == sorted(uploads)

    env = operator_env(stack.passwords, stack.config)
    backups = tmp_path / "backups"
    out, backup_s = _ok(["backup", "--to", str(backups)], env)
    [made] = _sets(backups)
    manifest = json.loads((made / "manifest.json").read_text())
    assert manifest["engine"] == "compose" and manifest["database"]["server_version"]
    assert "PostgreSQL) 15" in manifest["extra"]["pg_dump"]  # the server's own pg_dump
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == files
    leftovers = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=io.media-analysis-kit.role"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    assert leftovers == []  # the throwaway containers are gone

    _ok(["down", "--volumes", "--yes"], env)
    assert record.load() is None
    _ok(["up", "--engine", "compose", "--no-build", "--no-verify"], env)
    endpoints = record.load()
    assert endpoints is not None
    fresh_url = _owner_url(stack)
    assert fingerprint(fresh_url)["analysis_jobs"][0] == 0

    out, restore_s = _ok(["restore", str(made)], env)
    assert "restored" in out
    assert fingerprint(fresh_url) == rows
    assert _store_hashes(stack.config) == files

    api = stack.endpoints.api_url
    with httpx.Client(base_url=api, headers=stack.headers, timeout=60) as c:
        for sha, body in uploads.items():
            answer = c.get(f"/media/{sha}/content")
            assert answer.status_code == 200 and answer.content == body, sha
    subprocess.run(["docker", "restart", stack.config.api_name], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    docker_host.wait_healthy([stack.config.api_name], timeout_s=180)
    with httpx.Client(base_url=api, headers=stack.headers, timeout=60) as c:
        ready = c.get("/health/ready").json()
        assert ready["checks"]["storage"] == "ok", ready
        sha = next(iter(uploads))
        assert c.get(f"/media/{sha}/content").content == uploads[sha]
        name, body, ctype = _mixed(99)
        assert c.post("/analyses", files={"file": (name, body, ctype)}).status_code == 201
    sweep = invoke(["retention", "--dry-run"], env)  # the restored store is the database's
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    print(f"docker drill timings: backup {backup_s:.1f} s, restore {restore_s:.1f} s "
          f"({N_UPLOADS} files, {sum(len(b) for b in uploads.values()):,} bytes)")  # fmt: skip
    stack.shared.update(set=made, rows=rows, files=files)


def _owner_url(stack: Deployed, config: StackConfig | None = None) -> str:
    """The schema owner's URL of the running stack (addresses change with every up)."""
    found = containers.endpoints(config or stack.config, stack.passwords, EngineKind.COMPOSE)
    return found.database_url


def test_external_mode_backup_and_forced_restore(stack: Deployed, tmp_path: Path) -> None:
    """A second checkout runs only the API (external mode) on the first one's servers: its
    backup uses the shared server's image for pg_dump, and its restore (--force: the
    database holds the drill's rows) gives back the same rows and files."""
    made = stack.shared.get("set")
    assert made is not None, "the managed drill must run first"
    config = stack.config
    servers = {config.postgres_host, config.redis_host}
    api_side = [s.name for s in build_stack(config).services if s.name not in servers]
    subprocess.run(["docker", "rm", "-f", *api_side], check=True, capture_output=True, timeout=60)
    external = StackConfig(mode="external", api_host_port=config.api_host_port)
    second = tmp_path / "second" / "infra-stack.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MA_INFRA_STATE_FILE", str(second))
        compose_up(external, stack.passwords)
        try:
            env = operator_env(stack.passwords, external)
            backups = tmp_path / "backups"
            _, backup_s = _ok(["backup", "--to", str(backups)], env)
            [mine] = _sets(backups)
            manifest = json.loads((mine / "manifest.json").read_text())
            assert {f["path"] for f in manifest["files"]} >= set(stack.shared["files"])
            refused = invoke(["restore", str(made)], env)
            assert refused.returncode == 1 and "not empty" in refused.stderr, refused.stderr
            _, restore_s = _ok(["restore", str(made), "--force"], env)
            assert fingerprint(_owner_url(stack, external)) == stack.shared["rows"]
            on_disk = _store_hashes(external)
            assert all(on_disk[k] == v for k, v in stack.shared["files"].items())
            print(f"external mode: backup {backup_s:.1f} s, forced restore {restore_s:.1f} s")
        finally:
            compose_down()
