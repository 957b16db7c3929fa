"""Several API replicas on one PostgreSQL and one storage volume, as real processes.

Each replica runs an outbox replayer on the same ``outbox/``, may defer requests under the
same Idempotency-Key, keeps uploads in flight in the shared ``tmp/``, and sweeps may run
beside them (``tests/integration/replica_workers.py`` is what one process does). The end
state must be what one process would leave: every entry replayed once, by one replica.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from app_patch import repository as repo
from app_patch.outbox import Outbox, OutboxEntry
from app_patch.settings import PROJECT_ROOT
from app_patch.storage import upload_key
from app_patch.store_identity import read_marker
from tests.integration.history_data import finished_job
from tests.integration.test_storage_support import (
    audit_counts,
    child_env,
    execute,
    query,
    record_store,
)

pytestmark = pytest.mark.usefixtures("clean_db")

WORKER = ["-m", "tests.integration.replica_workers"]
REPLICAS = 3


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def report_of(child: subprocess.Popen[str], timeout: float = 180) -> dict[str, Any]:
    out, err = child.communicate(timeout=timeout)
    assert child.returncode == 0, err
    lines = [line for line in out.splitlines() if line.startswith("{")]
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def deferred_world(url: str, root: Path) -> dict[str, set[str]]:
    """What an outage leaves: 300 entries under ``root/outbox``, like the API writes them.

    240 name one of 20 placed uploads; 30 hold a claimed key; 20 repeat a request whose job
    committed before the outage (they merge into it); 10 are poison (a NUL byte).
    """
    outbox = Outbox(root / "outbox")
    files = []
    for n in range(20):
        sha = f"{n:064x}"
        key = upload_key(sha)
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(b"abc")
        files.append(repo.MediaSnapshot(sha, 3, "text/plain", key))
    kinds: dict[str, set[str]] = {"plain": set(), "keyed": set(), "merged": set(), "poison": set()}
    for n in range(240):
        job = finished_job()
        outbox.append(OutboxEntry(job, files[n % len(files)]))
        kinds["plain"].add(str(job.new.job_id))
    for n in range(30):
        job = finished_job(f"deferred-{n}", fingerprint=f"{n:064x}")
        outbox.append(OutboxEntry(job, None))
        assert job.new.job_id is not None and job.new.idempotency_key is not None
        assert outbox.claim_key(job.new.idempotency_key, job.new.job_id, f"{n:064x}") is None
        kinds["keyed"].add(str(job.new.job_id))
    for n in range(20):
        fingerprint = f"{n + 100:064x}"
        execute(
            url,
            "INSERT INTO analysis_jobs (id, analysis_type, status, idempotency_key,"
            " request_fingerprint) VALUES (%s, 'basic', 'succeeded', %s, %s)",
            uuid.uuid4(),
            f"committed-{n}",
            fingerprint,
        )
        job = finished_job(f"committed-{n}", fingerprint=fingerprint)
        outbox.append(OutboxEntry(job, None))
        kinds["merged"].add(str(job.new.job_id))
    for _ in range(10):
        job = finished_job(client_ref="bad\x00ref")
        outbox.append(OutboxEntry(job, None))
        kinds["poison"].add(str(job.new.job_id))
    return kinds


def test_three_replayers_replay_every_entry_exactly_once(clean_db: str, tmp_path: Path) -> None:
    """Three API processes drain one outbox at once, and race to record the store first."""
    root = tmp_path / "root"
    kinds = deferred_world(clean_db, root)
    go = tmp_path / "go"
    children = [start([*WORKER, "replay", clean_db, str(root), str(go)]) for _ in range(REPLICAS)]
    time.sleep(1.0)  # let them all reach the barrier (imports take a while)
    go.write_bytes(b"")
    reports = [report_of(child) for child in children]

    replayed = [set(r["replayed"]) for r in reports]
    assert sum(len(r["replayed"]) for r in reports) == 290, "each entry replayed once"
    assert set().union(*replayed) == kinds["plain"] | kinds["keyed"] | kinds["merged"]
    assert sum(1 for r in replayed if r) >= 2, f"the replicas really shared the work: {reports}"
    assert sum(r["quarantined"] for r in reports) == 10, "each poison entry quarantined once"
    assert all(r["identity_checked"] for r in reports)

    outbox = Outbox(root / "outbox")
    assert outbox.backlog() == 0
    assert {f.job_id for f in outbox.failed()} == kinds["poison"]
    assert (
        sorted(p.suffix for p in (root / "outbox" / "failed").iterdir())
        == [".error"] * 10 + [".json"] * 10
    ), "one error note per quarantined entry, none left by a lost race"
    assert [p.name for p in (root / "outbox" / "keys").iterdir()] == [".index.lock"]
    assert len(list((root / "outbox" / "merged").iterdir())) == 20
    leftovers = [p.name for p in (root / "outbox").iterdir() if p.is_file()]
    assert leftovers == [], "no temp file left in outbox/"

    [(jobs,)] = query(clean_db, "SELECT count(*) FROM analysis_jobs")
    assert jobs == 290, "240 + 30 replayed, 20 committed before (merged into)"
    [(results,)] = query(clean_db, "SELECT count(*) FROM analysis_results")
    assert results == 270
    [(media, linked)] = query(
        clean_db,
        "SELECT (SELECT count(*) FROM media_files WHERE deleted_at IS NULL),"
        " count(*) FILTER (WHERE media_file_id IS NOT NULL) FROM analysis_jobs",
    )
    assert (media, linked) == (20, 240), "one live row per placed upload, every job linked"
    [(recorded,)] = query(clean_db, "SELECT store_id FROM store_identity")
    assert recorded == read_marker(root), "three first writers agreed on one store identity"


def test_concurrent_key_claims_never_remove_another_requests_claim(tmp_path: Path) -> None:
    """Replicas defer requests under one key and release claims of replayed or withdrawn
    entries at the same time: a claim a process won stands until that process lets it go."""
    directory = tmp_path / "outbox"
    Outbox(directory)
    go = tmp_path / "go"
    children = [
        start([*WORKER, "keys", str(directory), "one-key", "300", str(go)]) for _ in range(REPLICAS)
    ]
    time.sleep(1.0)
    go.write_bytes(b"")
    reports = [report_of(child) for child in children]
    assert sum(r["won"] for r in reports) > 0
    assert [r["lost_after_win"] for r in reports] == [0] * REPLICAS, reports
    assert Outbox(directory).key_claim("one-key") is None, "every claim released"
    assert list(directory.glob("*.json")) == []


def test_an_upload_in_flight_survives_two_sweepers_and_a_replica_start(
    clean_db: str, tmp_path: Path
) -> None:
    """One replica is writing an upload into tmp/ (its file made to look three days old);
    two sweeps (tmp policy) and another replica's start-up cleanup run at the same time: the
    upload is never touched, the real leftovers go, each audited at most once."""
    root = tmp_path / "root"
    record_store(clean_db, root)
    ready, go = tmp_path / "ready", tmp_path / "go"
    writer = start([*WORKER, "stage", str(root), str(ready), str(go)])
    deadline = time.monotonic() + 60
    for _ in range(60_000):
        if ready.exists() or writer.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.001)
    [in_flight] = json.loads(ready.read_bytes())
    old = time.time() - 3 * 86400
    os.utime(root / "tmp" / in_flight, (old, old))
    leftovers = [f"ma-{uuid.uuid4().hex}.part" for _ in range(40)]
    leftovers += [f"upload-{n}.tmp" for n in range(10)]  # not ours: the tmp policy's by age
    for name in leftovers:
        (root / "tmp" / name).write_bytes(b"crash leftover")
        os.utime(root / "tmp" / name, (old, old))

    env = child_env(clean_db, root, retention_batch_size=5)
    sweeps = [start(["-m", "app_patch.retention", "--policy", "tmp"], env) for _ in range(2)]
    replica_start = start(
        [
            "-c",
            "import asyncio, sys; from app_patch.settings import StorageSettings;"
            " from app_patch.storage import Storage;"
            " asyncio.run(Storage.open(StorageSettings(root=sys.argv[1])))",
            str(root),
        ]
    )
    swept = [report_of(child) for child in sweeps]
    report_of_start = replica_start.communicate(timeout=60)
    assert replica_start.returncode == 0, report_of_start[1]
    assert all(r["errors"] == [] for r in swept), swept

    assert sorted(p.name for p in (root / "tmp").iterdir()) == [in_flight], "only the upload"
    audits = {i: n for (t, i), n in audit_counts(clean_db).items() if t == "tmp_file"}
    assert f"tmp/{in_flight}" not in audits
    assert set(audits.values()) <= {1}, "no leftover audited twice"
    assert {f"tmp/{n}" for n in leftovers if not n.startswith("ma-")} <= set(audits)

    go.write_bytes(b"")
    finished_upload = report_of(writer)
    assert finished_upload == {"survived": True, "size": 8192, "name": in_flight}
