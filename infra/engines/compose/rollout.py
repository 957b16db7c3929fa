"""``invoke deploy`` on compose: the API replicas rolled onto a new image one at a time behind
the proxy (:class:`Rollout`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from infra import compose, docker_host, proxy
from infra.config import StackConfig
from infra.engines import record
from infra.engines.base import DeployRequest
from infra.engines.compose.project import adopt_existing, rendered_path, run, start, stop
from infra.engines.kinds import EngineError
from infra.progress import Progress
from infra.spec import Network, Stack, Volume
from infra.stack import STORAGE_VOLUME


class Rollout:
    """One replica at a time: (1) start a surge container of the new image under the same DNS
    name, (2) wait until Docker and the proxy both see it healthy (``deploy_timeout``; if it
    never is, remove it: the old version keeps serving), (3) drain the old replica in the
    proxy (``drain_timeout``), (4) recreate the replica with the new image and wait until the
    proxy sees it UP, (5) drain and remove the surge container. At every moment at least one
    healthy replica is in the proxy's pool, and a replica is stopped only once drained."""

    def __init__(
        self,
        spec: Stack,
        config: StackConfig,
        secrets: Mapping[str, str],
        request: DeployRequest,
        progress: Progress,
    ) -> None:
        self.spec, self.config, self.secrets, self.progress = spec, config, secrets, progress
        self.deploy_timeout = float(request.deploy_timeout_s or config.deploy_timeout_s)
        self.drain_timeout = float(request.drain_timeout_s or config.drain_timeout_s)
        self.proxy = config.proxy_name

    def _address(self, name: str) -> str:
        return docker_host.container_ip(name, self.config.network_name)

    def _surge_stack(self, name: str) -> Stack:
        replica = self.spec.service(name)
        surge = replace(replica, name=f"{name}-next", depends_on={})
        return Stack(
            project=f"{self.spec.project}-surge",
            networks=(Network(self.config.network_name, external=True),),
            volumes=(Volume(STORAGE_VOLUME, external=True),),
            services=(surge,),
            secrets=self.spec.secrets,
        )

    def _healthy_in_proxy(self, name: str, timeout_s: float) -> str:
        docker_host.wait_healthy([name], timeout_s=timeout_s)
        address = self._address(name)
        proxy.wait_for(
            self.proxy,
            lambda seen: any(s.address == address and s.up and not s.draining for s in seen),
            timeout_s,
            f"the proxy routing to {name} ({address})",
        )
        return address

    def _drain(self, name: str, address: str) -> None:
        left = proxy.drain(self.proxy, address, self.drain_timeout)
        note = f" ({left} requests still open after {self.drain_timeout:.0f}s)" if left else ""
        self.progress.step(f"drained {name}{note}")

    def roll(self, name: str) -> None:
        surge = self._surge_stack(name)
        surge_name = surge.services[0].name
        surge_path = record.state_dir() / "compose-surge.yml"
        self.progress.step(f"{name}: starting {surge_name} from the new image")
        start(surge, self.secrets, surge_path, self.progress)
        try:
            self._healthy_in_proxy(surge_name, self.deploy_timeout)
        except (TimeoutError, proxy.ProxyError):
            stop(surge, surge_path, progress=self.progress)
            raise EngineError(
                f"the new image never became healthy within {self.deploy_timeout:.0f}s: "
                f"{name} keeps serving the old version (see `docker logs {name}` after a retry)"
            ) from None
        old = self._address(name)
        self._drain(name, old)
        path = rendered_path()
        compose.write(adopt_existing(self.spec), path)
        run(self.spec, ["up", "-d", "--no-deps", "--no-build", name], path, self.progress)
        self._ready_again(old)
        self._healthy_in_proxy(name, self.deploy_timeout + 60)
        self._drain(surge_name, self._address(surge_name))
        address = self._address(surge_name)
        stop(surge, surge_path, progress=self.progress)
        self._ready_again(address)
        self.progress.step(f"{name}: on the new image")

    def _ready_again(self, address: str) -> None:
        """A drained slot keeps its DRAIN flag when its container goes and DNS refills it with
        another one: clear it once the drained container is gone."""
        for server in proxy.servers(self.proxy):
            if server.draining and server.address in {address, ""}:
                proxy.command(self.proxy, f"set server {proxy.BACKEND}/{server.name} state ready")
