"""The fleet view: every connector of each tunnel, as the Cloudflare API lists them.

Each host sees only its own replicas; the API lists every connector of a tunnel, whichever host
runs it, so it is the source of truth for "how many connectors serve this tunnel fleet-wide".

Polling shares Cloudflare's per-user limit (1200 requests / 300 s) with every other tool, so the
poller keeps to ``fleet.request_budget`` requests per 300 s window whatever the number of tunnels:

* a round costs :data:`REQUESTS_PER_TUNNEL` requests per tunnel (connections + tunnel status);
  rounds are spaced ``max(poll_seconds, 300 * requests_per_round / request_budget)``, ±10 %;
* a sliding-window log of the requests actually made is a hard guard: a call that does not fit
  is not made (a round cut short resumes at the tunnel it stopped at, so none starves);
* on HTTP 429 every call stops until ``retry-after`` has passed.

Over 300 lines because the poller and its budgeted schedule are one loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from tunnelkeeper.alerts.notification import Condition
from tunnelkeeper.cloudflare.api import CloudflareAPI, CloudflareAPIError, Connector, RateLimited
from tunnelkeeper.cloudflare.budget import RequestWindow, round_interval_seconds
from tunnelkeeper.config.model import FleetConfig, TunnelConfig
from tunnelkeeper.metrics import Metrics

log = structlog.get_logger("tunnelkeeper.fleet")

REQUESTS_PER_TUNNEL = 2  # GET …/connections and GET …/{id} (status)
JITTER = 0.1
MIN_STALE_AFTER_SECONDS = 600.0  # older data is not acted on (covers a 5-minute 429 block)
MAX_COLOS = 64  # bound the colo label's cardinality whatever the API says
TUNNEL_STATUSES = frozenset({"inactive", "healthy", "degraded", "down"})


class _Rng(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


@dataclass
class _TunnelView:
    name: str
    id: str
    expected: int | None
    connectors: list[Connector] = field(default_factory=list)
    status: str | None = None
    polled_at: datetime | None = None  # wall clock, for people
    polled_mono: float | None = None  # policy clock
    error: str | None = None
    unknown_local: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    colos: set[str] = field(default_factory=set)  # colo label values currently exported

    @property
    def live_connectors(self) -> int:
        """Connectors with at least one connection not pending reconnect."""
        return sum(1 for c in self.connectors if c.live_connections > 0)

    def colo_connections(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for c in self.connectors:
            for conn in c.conns:
                if not conn.is_pending_reconnect:
                    counts[conn.colo_name or "unknown"] += 1
        return dict(counts.most_common(MAX_COLOS))


class FleetPoller:
    def __init__(
        self,
        fleet: FleetConfig,
        tunnels: Sequence[TunnelConfig],
        metrics: Metrics,
        *,
        api: CloudflareAPI,
        local_connectors: Callable[[str], set[str]],
        clock: Callable[[], float] = time.monotonic,
        rng: _Rng = random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.fleet = fleet
        self.metrics = metrics
        self.api = api
        self._local_connectors = local_connectors
        self._clock = clock
        self._rng = rng
        self._sleep = sleep
        self._views = [
            _TunnelView(t.name, t.id.lower(), t.expected_connectors) for t in tunnels if t.id
        ]
        self.window = RequestWindow(fleet.request_budget)
        self._blocked_deadline = 0.0
        self._cursor = 0
        self.rate_limited_total = 0
        self.budget_deferrals_total = 0
        # called after every round, so fleet-wide alerts are re-posted on fresh evidence only
        self.on_polled: Callable[[], None] = lambda: None

    # --- policy -------------------------------------------------------------------------------

    @property
    def requests_per_round(self) -> int:
        return REQUESTS_PER_TUNNEL * len(self._views)

    @property
    def interval_seconds(self) -> float:
        return round_interval_seconds(
            self.fleet.poll_seconds, self.requests_per_round, self.fleet.request_budget
        )

    @property
    def stale_after_seconds(self) -> float:
        return max(3 * self.interval_seconds, MIN_STALE_AFTER_SECONDS)

    def is_blocked(self, now: float) -> bool:
        return now < self._blocked_deadline

    def next_delay_seconds(self) -> float:
        """How long to wait before the next round: the jittered interval, but never before a
        429 block ends nor before the window has room for a round."""
        now = self._clock()
        jittered = self.interval_seconds * self._rng.uniform(1 - JITTER, 1 + JITTER)
        blocked = max(0.0, self._blocked_deadline - now)
        room = self.window.wait_seconds(now, self.requests_per_round)
        return max(jittered, blocked, room)

    def _is_fresh(self, view: _TunnelView, now: float) -> bool:
        return view.polled_mono is not None and now - view.polled_mono <= self.stale_after_seconds

    # --- I/O ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until cancelled."""
        log.info(
            "fleet_polling_started",
            tunnels=len(self._views),
            interval_seconds=round(self.interval_seconds, 1),
            request_budget=self.fleet.request_budget,
        )
        while True:
            try:
                await self.poll_once()
                self.on_polled()
            except Exception as exc:  # the poller must outlive any bug
                log.error("fleet_poll_crashed", error=f"{type(exc).__name__}: {exc}")
            await self._sleep(self.next_delay_seconds())

    async def poll_once(self) -> None:
        """One round over the tunnels with an ``id``, within the budget and any 429 block."""
        self._expire_stale(self._clock())
        n = len(self._views)
        for i in range(n):
            index = (self._cursor + i) % n
            view = self._views[index]
            now = self._clock()
            if self.is_blocked(now):
                self._cursor = index
                return
            if not self.window.has_room(now):
                self._cursor = index
                self.budget_deferrals_total += 1
                log.info(
                    "fleet_poll_deferred",
                    reason="request budget",
                    request_budget=self.fleet.request_budget,
                    tunnels_left=n - i,
                )
                return
            try:
                await self._poll_tunnel(view)
            except RateLimited as exc:
                self._cursor = index
                self.rate_limited_total += 1
                self._blocked_deadline = self._clock() + exc.retry_after_seconds
                view.error = str(exc)
                log.warning("fleet_rate_limited", retry_after_seconds=exc.retry_after_seconds)
                return
            except CloudflareAPIError as exc:
                view.error = str(exc)
                log.warning("fleet_poll_failed", tunnel=view.name, error=str(exc))
        self._cursor = 0

    async def _call(self, request: Callable[[], Awaitable[Any]]) -> Any:
        self.window.record(self._clock())
        return await request()

    async def _poll_tunnel(self, view: _TunnelView) -> None:
        connectors: list[Connector] = await self._call(lambda: self.api.list_connectors(view.id))
        self._apply_connectors(view, connectors)
        if not self.window.has_room(self._clock()):
            return  # keep the previous status; the connectors matter more
        tunnel = await self._call(lambda: self.api.get_tunnel(view.id))
        status = tunnel.get("status")
        view.status = status if status in TUNNEL_STATUSES else "unknown"

    def _apply_connectors(self, view: _TunnelView, connectors: list[Connector]) -> None:
        view.connectors = connectors
        view.polled_mono = self._clock()
        view.polled_at = datetime.now(UTC)
        view.error = None
        api_ids = {c.id.lower() for c in connectors}
        local = {c.lower() for c in self._local_connectors(view.name)}
        unknown = sorted(local - api_ids)
        foreign = sorted(api_ids - local)
        if set(unknown) - set(view.unknown_local):
            log.warning(
                "fleet_connector_unlisted",
                tunnel=view.name,
                connectors=unknown,
                detail="a local replica's connector is not listed by the Cloudflare API",
            )
        if set(foreign) - set(view.foreign):
            log.info("fleet_connectors_elsewhere", tunnel=view.name, connectors=foreign)
        view.unknown_local, view.foreign = unknown, foreign
        self._export(view)

    def _export(self, view: _TunnelView) -> None:
        self.metrics.fleet_connectors.labels(tunnel=view.name).set(view.live_connectors)
        colos = view.colo_connections()
        for colo, count in colos.items():
            self.metrics.fleet_colo_connections.labels(tunnel=view.name, colo=colo).set(count)
        for gone in view.colos - set(colos):
            self.metrics.fleet_colo_connections.remove(view.name, gone)
        view.colos = set(colos)

    def _expire_stale(self, now: float) -> None:
        """Data too old to act on leaves the metrics (other hosts' fresher views remain)."""
        for view in self._views:
            if view.polled_mono is None or self._is_fresh(view, now):
                continue
            if view.colos or view.connectors:
                log.warning("fleet_view_stale", tunnel=view.name, error=view.error)
            view.connectors = []
            for colo in view.colos:
                self.metrics.fleet_colo_connections.remove(view.name, colo)
            view.colos = set()
            with contextlib.suppress(KeyError):
                self.metrics.fleet_connectors.remove(view.name)

    # --- views --------------------------------------------------------------------------------

    def conditions(self) -> list[Condition]:
        """FleetConnectorsLow instances true now. No ``host`` label: every host that sees the
        same fleet fault raises the same identity."""
        now = self._clock()
        out = []
        for view in self._views:
            if view.expected is None or not self._is_fresh(view, now):
                continue
            live = view.live_connectors
            if live < view.expected:
                out.append(
                    Condition(
                        "FleetConnectorsLow",
                        labels={"tunnel": view.name},
                        details={"connectors": str(live), "expected": str(view.expected)},
                    )
                )
        return out

    def snapshot(self) -> dict[str, Any]:
        """JSON-able fleet view for ``/status`` and ``tunnelkeeper status``."""
        now = self._clock()
        return {
            "interval_seconds": round(self.interval_seconds, 3),
            "request_budget": self.fleet.request_budget,
            "requests_in_window": self.window.count(now),
            "rate_limited_for_seconds": round(max(0.0, self._blocked_deadline - now), 3),
            "tunnels": [self._view_json(v, now) for v in self._views],
        }

    def _view_json(self, view: _TunnelView, now: float) -> dict[str, Any]:
        return {
            "name": view.name,
            "id": view.id,
            "expected_connectors": view.expected,
            "live_connectors": view.live_connectors if self._is_fresh(view, now) else None,
            "status": view.status,
            "colo_connections": view.colo_connections(),
            "connectors": [
                {
                    "id": c.id,
                    "version": c.version,
                    "live_connections": c.live_connections,
                    "pending_connections": len(c.conns) - c.live_connections,
                    "is_local": c.id.lower() not in view.foreign,
                }
                for c in view.connectors
            ],
            "polled_at": view.polled_at.isoformat(timespec="seconds") if view.polled_at else None,
            "is_stale": view.polled_mono is not None and not self._is_fresh(view, now),
            "error": view.error,
            "unknown_local": list(view.unknown_local),
            "foreign": list(view.foreign),
        }
