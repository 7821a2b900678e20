"""What the daemon's HTTP endpoints and control socket answer: health, readiness, status,
rotation and reload. A mixin of :class:`~tunnelkeeper.service.daemon.Daemon`, kept apart so
the loop reads on its own."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from tunnelkeeper import __version__
from tunnelkeeper.cloudflared.upgrade import Upgrader
from tunnelkeeper.config.model import Config
from tunnelkeeper.service.notify import Notifier
from tunnelkeeper.service.reload import reconfigure
from tunnelkeeper.service.statusview import tunnel_status
from tunnelkeeper.service.tunnelset import TunnelSet

if TYPE_CHECKING:
    from tunnelkeeper.alerts import AlertPipeline
    from tunnelkeeper.service.apitasks import ApiTasks

log = structlog.get_logger("tunnelkeeper.daemon")


class Endpoints:
    config: Config
    clock: Callable[[], float]
    tunnels: TunnelSet
    # started a moment after the replicas (Daemon._start_services); the listeners come first
    services_started: bool
    alerts: AlertPipeline
    api_tasks: ApiTasks
    started_at: float
    started_wall: datetime
    last_tick_at: float
    unknown_replicas: tuple[str, ...]
    notifier: Notifier
    upgrader: Upgrader
    _reload_lock: asyncio.Lock
    _status_line: str

    def healthz(self) -> tuple[bool, str]:
        """Read from the HTTP thread: plain fields only, set by the loop."""
        stale = self.clock() - self.last_tick_at
        limit = 3 * self.config.daemon.probe_interval_seconds + 2
        text = f"supervision loop last ran {stale:.1f}s ago"
        unknown = self.unknown_replicas
        if unknown:
            return False, f"{text}; no fresh probe (state unknown) for: {', '.join(unknown)}"
        return (stale < limit, text)

    def readyz(self) -> tuple[bool, str]:
        dark = [
            n
            for n, s in self.tunnels.sups.items()
            if not any(r.is_serving for r in s.replicas.values())
        ]
        if dark:
            return False, "no ready replica for: " + ", ".join(dark)
        return True, "every tunnel has a ready replica"

    def status(self) -> dict[str, Any]:
        now = self.clock()
        started = self.services_started
        fleet = self.api_tasks.fleet if started else None
        return {
            "version": __version__,
            "host": self.config.daemon.host,
            "pid": os.getpid(),
            "uptime_seconds": round(now - self.started_at, 1),
            "started_at": self.started_wall.isoformat(timespec="seconds"),
            "tunnels": [tunnel_status(s, now) for s in self.tunnels.sups.values()],
            "alerts_firing": sorted(
                "/".join([a.alertname, *(a.labels[k] for k in ("tunnel", "slot") if k in a.labels)])
                for a in (self.alerts.firing() if started else ())
            ),
            "alerts": self.alerts.status() if started else None,
            "fleet": fleet.snapshot() if fleet is not None else None,
            "fleet_error": self.api_tasks.fleet_error if started else None,
        }

    async def rotate(self, tunnel: str | None, force: bool) -> dict[str, Any]:
        names = [tunnel] if tunnel else list(self.tunnels.sups)
        if tunnel and tunnel not in self.tunnels.sups:
            return {"error": f"no tunnel named {tunnel!r} in this daemon's config"}
        results = await asyncio.gather(*(self.tunnels.feeds[n].rotate(force) for n in names))
        return {"tunnels": list(results)}

    async def reload(self) -> dict[str, Any]:
        """Re-read the config; apply it with the least disruption, or keep the running one."""
        from tunnelkeeper.config.load import ConfigError, load_config

        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")
        try:
            new = await asyncio.to_thread(load_config, self.config.path)
        except ConfigError as exc:
            problems = str(exc).splitlines()
            log.error("reload_rejected", problems=problems, kept="the running config")
            self.notifier.send("READY=1", "STATUS=reload rejected: invalid config, kept the old")
            return {"error": "invalid config; the running config is kept", "problems": problems}
        async with self._reload_lock:
            self.config, changes = await reconfigure(self.tunnels, self.upgrader, self.config, new)
        for feed in self.tunnels.feeds.values():
            feed.poll_now()
        self.notifier.send("READY=1", f"STATUS={self._status_line}")
        log.info("config_reloaded", **changes)
        return {"reloaded": True, **changes}
