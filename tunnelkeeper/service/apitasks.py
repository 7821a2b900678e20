"""The daemon's work against Cloudflare's API, on the ``[fleet]`` host: the fleet poller and the
scheduled tunnel-secret refresh (apscheduler is imported only when a schedule is configured)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from tunnelkeeper.alerts.notification import Condition
from tunnelkeeper.cloudflare.api import CloudflareAPI
from tunnelkeeper.cloudflare.fleet import FleetPoller
from tunnelkeeper.config.model import Config, TunnelConfig
from tunnelkeeper.logconfig import SECRETS
from tunnelkeeper.metrics import Metrics
from tunnelkeeper.service.tunnelset import TunnelSet
from tunnelkeeper.tasks import keep_running

if TYPE_CHECKING:
    from tunnelkeeper.cloudflare.schedule import RefreshScheduler

log = structlog.get_logger("tunnelkeeper.daemon")


class ApiTasks:
    def __init__(
        self,
        config: Config,
        tunnels: TunnelSet,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config, self.tunnels, self.metrics, self.clock = config, tunnels, metrics, clock
        self.fleet: FleetPoller | None = None
        self.fleet_error: str | None = None
        self.scheduler: RefreshScheduler | None = None
        self._fleet_task: asyncio.Task[None] | None = None
        # what a fresh fleet poll shows, handed on after every round (the daemon re-posts the
        # fleet-wide alerts it still shows)
        self.on_fleet_polled: Callable[[list[Condition]], None] = lambda conditions: None

    async def start(self) -> None:
        self._start_fleet()
        await self._start_schedule()

    def conditions(self) -> list[Condition]:
        return self.fleet.conditions() if self.fleet is not None else []

    def _start_fleet(self) -> None:
        fleet = self.config.fleet
        if fleet is None:
            return
        try:
            api_token = fleet.api_token_file.read_text().strip()
        except OSError as exc:
            self.fleet_error = f"fleet.api_token_file: {exc.strerror or exc}"
            log.error("fleet_disabled", key="fleet.api_token_file", error=self.fleet_error)
            return
        SECRETS.add(api_token)
        api = CloudflareAPI(fleet.api_url, fleet.account_id, api_token)
        sups = self.tunnels.sups
        self.fleet = FleetPoller(
            fleet,
            self.config.tunnels,
            self.metrics,
            api=api,
            local_connectors=lambda name: {
                r.connector_id for r in sups[name].replicas.values() if r.connector_id
            },
            clock=self.clock,
        )
        poller = self.fleet
        poller.on_polled = lambda: self.on_fleet_polled(poller.conditions())
        run = keep_running("fleet", self.fleet.run, self.metrics, pause_seconds=5.0)
        self._fleet_task = asyncio.create_task(run, name="fleet poller")

    async def _start_schedule(self) -> None:
        cfg = self.config
        if cfg.fleet is None or not any(t.refresh_schedule for t in cfg.tunnels):
            return
        from tunnelkeeper.cloudflare.refresh import scheduled_refresh
        from tunnelkeeper.cloudflare.schedule import RefreshScheduler

        async def refresh(tunnel: TunnelConfig) -> None:
            await scheduled_refresh(self.config, tunnel)
            feed = self.tunnels.feeds.get(tunnel.name)
            if feed is not None:
                feed.poll_now()  # roll here now rather than at the next poll

        self.scheduler = RefreshScheduler(cfg, cfg.daemon.state_dir, refresh)
        await self.scheduler.start()

    async def aclose(self) -> None:
        if self._fleet_task is not None:
            self._fleet_task.cancel()
            await asyncio.gather(self._fleet_task, return_exceptions=True)
        if self.fleet is not None:
            await self.fleet.api.aclose()
        if self.scheduler is not None:
            await self.scheduler.aclose()
