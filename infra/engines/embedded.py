"""The embedded engine: no containers. PostgreSQL from pgserver (with its owner and app
roles) and a loopback ``redis-server`` under the settings' data dir, exactly as the app's own
bootstrap starts them (Unix socket / loopback only, so no passwords), and the API as a local
background process (:mod:`infra.engines.local_api`) whose port is checked before anything starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from infra.engines import local_api, record
from infra.engines.base import DownPlan, StackEndpoints
from infra.engines.kinds import EngineError, EngineKind
from infra.progress import Progress
from infra.verify import CheckResult

if TYPE_CHECKING:
    from infra.engines.base import DeployRequest, UpRequest

NO_DEPLOY = (
    "invoke deploy rolls API containers behind the proxy: the embedded engine has one "
    "local API process (restart it with invoke down && invoke up)"
)


class EmbeddedEngine:
    kind: ClassVar[EngineKind] = EngineKind.EMBEDDED

    def available(self) -> bool:
        return True

    def preview(self, progress: Progress) -> str:
        from app_patch.settings import get_settings

        settings = get_settings()
        data_dir = settings.data_dir.resolve()
        running = _running_postmaster_socket(data_dir / "pg") is not None
        return "\n".join(
            [
                f"embedded PostgreSQL in {data_dir / 'pg'}: "
                + ("running, kept" if running else "start"),
                f"embedded redis-server in {data_dir / 'redis'}: start if missing",
                f"local API on {settings.api.host}:{settings.api.port}: start",
            ]
        )

    def up(self, request: UpRequest, progress: Progress) -> StackEndpoints:
        from app_patch.embedded import EmbeddedRedis
        from app_patch.settings import get_settings
        from app_patch.target import embedded_urls

        record.load_for(self.kind)
        settings = get_settings()
        host, port = settings.api.host, request.api_port or settings.api.port
        local_api.check_can_start(host, port)  # before any server starts
        progress.step(f"embedded PostgreSQL in {settings.data_dir / 'pg'}")
        urls = embedded_urls(settings)
        redis_url = None
        if EmbeddedRedis.available():
            progress.step(f"embedded redis-server in {settings.data_dir / 'redis'}")
            redis_url = EmbeddedRedis(settings.data_dir / "redis").start()
        api_url = f"http://{host}:{port}"
        owner = record.checkout_owner(create=True)
        # Recorded before the API starts: from now on verify expects it, and down stops it.
        extra = {"redis_url": redis_url, "data_dir": str(settings.data_dir.resolve())}
        record.save(record.StackRecord(self.kind, owner, None, None, api_url, extra))
        env = {"MA_DB_URL": urls.app}
        if redis_url:
            env["MA_REDIS_URL"] = redis_url
        progress.step(f"local API on {api_url}")
        local_api.start(env, host, port)
        progress.step(f"local API pid {local_api.running_pid()} answers as ours on {api_url}")
        return StackEndpoints(self.kind, urls.owner, redis_url, api_url, urls.app)

    def attach(self, recorded: record.StackRecord) -> StackEndpoints:
        from app_patch.db_roles import EMBEDDED_APP, EMBEDDED_OWNER, role_url
        from app_patch.embedded import EMBEDDED_DB_NAME, socket_url

        pg = data_dir(recorded) / "pg"
        socket_dir = _running_postmaster_socket(pg)
        if socket_dir is None:
            raise EngineError(
                f"the embedded PostgreSQL that invoke up started ({pg}) is not running: "
                "run invoke up"
            )
        admin = socket_url(socket_dir, EMBEDDED_DB_NAME)
        return StackEndpoints(
            self.kind,
            role_url(admin, EMBEDDED_OWNER, database=EMBEDDED_DB_NAME),
            recorded.extra.get("redis_url"),
            recorded.api_url,
            role_url(admin, EMBEDDED_APP, database=EMBEDDED_DB_NAME),
        )

    def down_plan(self, recorded: record.StackRecord) -> DownPlan:
        return DownPlan(self.kind)

    def down(
        self, recorded: record.StackRecord, *, remove_volumes: bool, progress: Progress
    ) -> None:
        from app_patch.embedded import EmbeddedPostgres, EmbeddedRedis

        if local_api.stop():
            progress.step("stopped the local API")
        root = data_dir(recorded)
        EmbeddedRedis(root / "redis").stop()
        if (root / "pg" / "postmaster.pid").exists():
            server = EmbeddedPostgres(root / "pg")
            server.start()  # attaches to the running server
            server.stop()
            progress.step(f"stopped the embedded PostgreSQL in {root / 'pg'} (data kept)")

    def deploy(
        self, recorded: record.StackRecord, request: DeployRequest, progress: Progress
    ) -> None:
        raise EngineError(NO_DEPLOY)

    def checks(self, endpoints: StackEndpoints) -> list[CheckResult]:
        """The local API the stack records must run and answer as ours (its instance id):
        a one-line :class:`local_api.LocalApiError` otherwise."""
        if endpoints.api_url is not None:
            local_api.confirm(endpoints.api_url)
        return []


def data_dir(recorded: record.StackRecord | None) -> Path:
    """The embedded servers' data dir the record names, else the settings' one."""
    from app_patch.settings import get_settings

    named = recorded.extra.get("data_dir") if recorded is not None else None
    return Path(named) if named else get_settings().data_dir


def _running_postmaster_socket(pgdata: Path) -> str | None:
    """The socket directory in ``postmaster.pid`` when that postmaster is alive."""
    try:
        lines = (pgdata / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        pid = int(lines[0])
        socket_dir = lines[4].strip()
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return socket_dir or None
