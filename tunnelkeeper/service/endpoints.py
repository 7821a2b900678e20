"""What the daemon's HTTP endpoints and control socket answer: health, readiness, status and
rotation. A mixin of :class:`~tunnelkeeper.service.daemon.Daemon`, kept apart so the loop reads
on its own."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

from tunnelkeeper import __version__
from tunnelkeeper.alerts import AlertPipeline
from tunnelkeeper.config.model import Config
from tunnelkeeper.service.apitasks import ApiTasks
from tunnelkeeper.service.statusview import tunnel_status
from tunnelkeeper.service.tunnelset import TunnelSet


class Endpoints:
    config: Config
    clock: Callable[[], float]
    tunnels: TunnelSet
    alerts: AlertPipeline
    api_tasks: ApiTasks
    started_at: float
    started_wall: datetime
    last_tick_at: float
    unknown_replicas: tuple[str, ...]

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
        fleet = self.api_tasks.fleet
        return {
            "version": __version__,
            "host": self.config.daemon.host,
            "pid": os.getpid(),
            "uptime_seconds": round(now - self.started_at, 1),
            "started_at": self.started_wall.isoformat(timespec="seconds"),
            "tunnels": [tunnel_status(s, now) for s in self.tunnels.sups.values()],
            "alerts_firing": sorted(
                "/".join([a.alertname, *(a.labels[k] for k in ("tunnel", "slot") if k in a.labels)])
                for a in self.alerts.firing()
            ),
            "alerts": self.alerts.status(),
            "fleet": fleet.snapshot() if fleet is not None else None,
            "fleet_error": self.api_tasks.fleet_error,
        }

    async def rotate(self, tunnel: str | None, force: bool) -> dict[str, Any]:
        names = [tunnel] if tunnel else list(self.tunnels.sups)
        if tunnel and tunnel not in self.tunnels.sups:
            return {"error": f"no tunnel named {tunnel!r} in this daemon's config"}
        results = await asyncio.gather(*(self.tunnels.feeds[n].rotate(force) for n in names))
        return {"tunnels": list(results)}
