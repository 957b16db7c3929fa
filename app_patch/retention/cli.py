"""Entry points: ``run_sweep`` (the configured database and root), its command-line wrapper
``sweep_configured`` and ``main`` (``python -m app_patch.retention``)."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from typing import TypedDict, Unpack

from app_patch.errors import OperatorError
from app_patch.retention.policies import Policy, parse_policies
from app_patch.retention.report import ProgressCallback, SweepReport
from app_patch.retention.sweeper import Sweeper
from app_patch.settings import Settings
from app_patch.storage import Storage, StorageUnavailableError


class SweepOptions(TypedDict, total=False):
    """What a caller may choose about one sweep (every key optional)."""

    dry_run: bool
    policies: Sequence[Policy] | None
    on_progress: ProgressCallback | None


async def run_sweep(settings: Settings, url: str, **options: Unpack[SweepOptions]) -> SweepReport:
    """Sweep the configured database and storage root (what ``invoke retention`` runs).

    The root's identity is checked before anything is created in it. A dry run builds the
    store without ``open()``: nothing is created, probed or cleaned. A real run does not clean
    tmp/ on open either: its ``tmp`` policy removes old leftovers with an audit row, so a dry
    run announces exactly what the real run does. Deleted media leave the cache at once.
    """
    from app_patch.cache import Kind, RedisCache
    from app_patch.db import engine_scope
    from app_patch.metrics import record_sweep
    from app_patch.server_urls import redis_url

    dry_run = options.get("dry_run", False)
    cache = RedisCache(settings, redis_url(settings))

    async def forget(sha256s: list[str]) -> None:
        await asyncio.gather(*(cache.invalidate(Kind.media, sha) for sha in sha256s))

    try:
        async with engine_scope(settings.db, url) as engine:
            sweeper = Sweeper(
                engine, Storage(settings.storage), settings.retention, on_media_deleted=forget
            )
            await sweeper.check_identity()
            if not dry_run:
                sweeper.storage = await Storage.open(settings.storage, clean_tmp=False)
            report = await sweeper.sweep(
                dry_run=dry_run,
                policies=options.get("policies"),
                on_progress=options.get("on_progress"),
            )
            if not dry_run:  # for /metrics: this process is never scraped
                record_sweep(sweeper.storage.root, report.error_count)
            return report
    finally:
        await cache.close()


def sweep_configured(settings: Settings, url: str, **options: Unpack[SweepOptions]) -> SweepReport:
    """``run_sweep`` for command lines: an unusable store becomes a one-line ``OperatorError``
    (a store that is not the database's raises ``StoreMismatchError``, one line too)."""
    try:
        return asyncio.run(run_sweep(settings, url, **options))
    except StorageUnavailableError as exc:
        raise OperatorError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m app_patch.retention [--dry-run] [--policy NAMES] [--progress]``.

    Prints JSON lines: with ``--progress`` one ``{"event": "progress", ...}`` per update, then
    always ``{"event": "report", ...}``. A refusal is one ``error:`` line on stderr, exit 1.
    ``invoke retention`` runs this inside the API container for a container stack.
    """
    from app_patch.errors import one_line_errors
    from app_patch.settings import get_settings
    from app_patch.target import resolve_target

    parser = argparse.ArgumentParser(prog="python -m app_patch.retention")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--policy", default="")
    parser.add_argument("--progress", action="store_true", help="JSON progress lines")
    args = parser.parse_args(argv)

    def progress(policy: Policy, done: int, total: int | None) -> None:
        event = {"event": "progress", "policy": str(policy), "done": done, "total": total}
        print(json.dumps(event), flush=True)

    with one_line_errors():
        policies = parse_policies(args.policy)
        settings = get_settings()
        target = resolve_target(settings)
        report = sweep_configured(
            settings,
            target.database_url,
            dry_run=args.dry_run,
            policies=policies,
            on_progress=progress if args.progress else None,
        )
    print(json.dumps({"event": "report", **report.as_dict()}), flush=True)
    return 1 if report.error_count else 0
