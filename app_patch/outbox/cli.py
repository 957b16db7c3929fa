"""``python -m app_patch.outbox``: list pending and failed entries, move a failed one back."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app_patch.errors import OperatorError
from app_patch.outbox.directory import Outbox


@dataclass(frozen=True)
class OutboxListing:
    pending: list[dict[str, Any]]
    failed: list[dict[str, Any]]


def list_entries(storage_root: Path) -> OutboxListing:
    outbox = Outbox(Path(storage_root) / "outbox")
    now = time.time()
    pending: list[dict[str, Any]] = []
    for path in outbox.pending():
        row: dict[str, Any] = {"job_id": path.stem, "age_s": None, "idempotency_key": None}
        with contextlib.suppress(FileNotFoundError):
            row["age_s"] = round(now - path.stat().st_mtime, 1)
            entry = outbox.get(uuid.UUID(path.stem)) if _is_uuid(path.stem) else None
            row["idempotency_key"] = entry.job.new.idempotency_key if entry else None
        pending.append(row)
    failed = [
        {"job_id": f.job_id, "age_s": round(f.age_s, 1), "error": f.error} for f in outbox.failed()
    ]
    return OutboxListing(pending, failed)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m app_patch.outbox list [--json] | retry ID`` on the configured storage root."""
    from app_patch.errors import one_line_errors
    from app_patch.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m app_patch.outbox")
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="pending and failed entries")
    listing.add_argument("--json", action="store_true")
    retry = sub.add_parser("retry", help="move a failed entry back to pending")
    retry.add_argument("entry")
    args = parser.parse_args(argv)
    with one_line_errors():
        root = get_settings().storage.root
        if not (Path(root) / "outbox").is_dir():
            raise OperatorError(f"no outbox under the storage root {root}")
        if args.command == "retry":
            Outbox(Path(root) / "outbox").retry(args.entry)
            print(f"moved {args.entry} back to pending")
            return 0
        found = list_entries(root)
    if args.json:
        print(json.dumps(asdict(found)))
    else:
        for row in found.pending:
            print(f"pending {row['job_id']} age {row['age_s']}s key {row['idempotency_key']}")
        for row in found.failed:
            print(f"failed  {row['job_id']} age {row['age_s']}s: {row['error']}")
        print(f"{len(found.pending)} pending, {len(found.failed)} failed")
    return 0
