"""The daemon's tunnels: a supervisor and a token feed for each configured tunnel, plus the
supervisors of tunnels removed by a reload that are still draining."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

from tunnelkeeper.config.model import CloudflaredConfig, DaemonConfig, TunnelConfig
from tunnelkeeper.metrics import Metrics
from tunnelkeeper.service.tokenfeed import TokenFeed
from tunnelkeeper.structs import replace
from tunnelkeeper.supervise.identity import identities, separation_enabled
from tunnelkeeper.supervise.ports import PortAllocator
from tunnelkeeper.supervise.probe import Prober
from tunnelkeeper.supervise.records import Replica
from tunnelkeeper.supervise.supervisor import TunnelSupervisor


class TunnelSet:
    def __init__(
        self,
        daemon: DaemonConfig,
        cloudflared: CloudflaredConfig,
        *,
        ports: PortAllocator,
        prober: Prober,
        metrics: Metrics,
        wake: asyncio.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.daemon, self.cloudflared = daemon, cloudflared
        self.ports, self.prober, self.metrics, self.wake, self.clock = (
            ports,
            prober,
            metrics,
            wake,
            clock,
        )
        self.sups: dict[str, TunnelSupervisor] = {}
        self.feeds: dict[str, TokenFeed] = {}
        self.retiring: list[TunnelSupervisor] = []  # removed by a reload, draining
        self.separated, self.separation_problem = separation_enabled(
            daemon.replica_users, cloudflared.path, daemon.runtime_dir
        )

    def add(self, t: TunnelConfig) -> TunnelSupervisor:
        sup = TunnelSupervisor(
            t,
            self.daemon,
            self.cloudflared,
            ports=self.ports,
            prober=self.prober,
            metrics=self.metrics,
            wake=self.wake,
            clock=self.clock,
        )
        if self.separated:
            names = {*self.sups, t.name}
            sup.run_as = identities(names, self.daemon.replica_uid_base)[t.name]
        self.sups[t.name] = sup
        self.feeds[t.name] = TokenFeed(t, sup, self.metrics, clock=self.clock)
        return sup

    async def remove(self, t: TunnelConfig) -> None:
        """Stop feeding it and drain all its replicas (no surge: the tunnel goes away)."""
        sup = self.sups.pop(t.name)
        await self.feeds.pop(t.name).aclose()
        sup.reconfigure(replace(t, replicas=0), self.cloudflared)
        self.retiring.append(sup)

    async def renew_feed(self, t: TunnelConfig) -> None:
        """A changed token source (or tunnel id): a new feed for the same supervisor."""
        await self.feeds[t.name].aclose()
        feed = self.feeds[t.name] = TokenFeed(t, self.sups[t.name], self.metrics, clock=self.clock)
        await feed.start()

    def all_supervisors(self) -> list[TunnelSupervisor]:
        return [*self.sups.values(), *self.retiring]

    def converge(self, on_error: Callable[[str, Exception], None]) -> None:
        for sup in self.all_supervisors():
            try:
                sup.converge()
            except Exception as exc:
                on_error(sup.cfg.name, exc)
        self.retiring = [s for s in self.retiring if s.replicas]

    def replicas(self) -> Iterator[Replica]:
        for sup in self.sups.values():
            yield from sup.replicas.values()
