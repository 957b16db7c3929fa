"""Which stack a backup or restore acts on, and its :class:`~infra.backup.site.Site`.

The same answer as ``invoke retention``: :func:`infra.stack_ops.file_store_target` (the
recorded stack of this checkout, its containers proven ours; or what ``MA_DB_URL`` /
``MA_STORAGE_ROOT`` name explicitly), then one site per engine family, from a registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app_patch.db import normalize_url
from app_patch.settings import get_settings
from infra import stack_ops
from infra.backup.container_site import ContainerSite
from infra.backup.local_site import LocalSite
from infra.backup.manifest import BackupError
from infra.backup.site import Site
from infra.engines import record
from infra.in_stack import ContainerTarget, FileStoreTarget, LocalTarget


@dataclass(frozen=True)
class StackSite:
    """The stack's schema owner URL (dump, restore, fix-ups), its app role's URL (the grants
    it must keep; None in a single-role setup), its engine's name and its site."""

    owner_url: str
    app_url: str | None
    engine: str
    site: Site

    @property
    def app_role(self) -> str | None:
        if self.app_url is None:
            return None
        return str(normalize_url(self.app_url).username or "") or None


def _local(place: FileStoreTarget) -> Site:
    return LocalSite(Path(get_settings().storage.root))


def _containers(place: FileStoreTarget) -> Site:
    found = record.load()
    if found is None or found.config is None:
        raise BackupError("the container stack's record has no config: run invoke up")
    return ContainerSite(found.config, found.owner)


SITES: dict[type, Callable[[FileStoreTarget], Site]] = {
    LocalTarget: _local,
    ContainerTarget: _containers,
}
"""One site per engine family, by where :func:`stack_ops.file_store_target` says files are."""


def current() -> StackSite:
    """The recorded (or explicitly named) stack; starts nothing."""
    recorded = record.load()
    if recorded is not None and str(recorded.engine) == "swarm":
        raise BackupError(
            "backup and restore are not available on the swarm engine yet (the container "
            "site finds the servers by container name); back up the volumes on the storage node"
        )
    place = stack_ops.file_store_target()
    site = SITES[type(place)](place)
    owner_url = stack_ops.owner_database_url()
    app_url = stack_ops.app_database_url()
    found = record.load()
    engine = str(found.engine) if found is not None else "explicit-url"
    return StackSite(owner_url, app_url if app_url != owner_url else None, engine, site)
