"""The daemon's one handle on alerting: conditions in on every tick, durable delivery out.

Usage from the supervisor::

    alerts = AlertPipeline(config.daemon.host, config.alerts, config.daemon.state_dir, metrics)
    await alerts.start()               # opens the outbox, restores firing alerts, starts workers
    alerts.observe(conditions)         # every tick; a fast local write when something changed
    alerts.firing(); alerts.status()   # for /status
    await alerts.aclose()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from tunnelkeeper.alertcatalog import ALERT_NAMES
from tunnelkeeper.alerts.delivery import Clock, Dispatcher
from tunnelkeeper.alerts.engine import AlertEngine
from tunnelkeeper.alerts.incidents import Incidents, evaluate
from tunnelkeeper.alerts.notification import Alert, Condition, Notification, rfc3339
from tunnelkeeper.alerts.outbox import Outbox, OutboxError
from tunnelkeeper.config.model import AlertsConfig
from tunnelkeeper.metrics import Metrics

log = structlog.get_logger("tunnelkeeper.alerts")

OUTBOX_FILE = "alerts-outbox.sqlite3"


class AlertPipeline:
    def __init__(
        self,
        host: str,
        config: AlertsConfig,
        state_dir: Path,
        metrics: Metrics,
        *,
        clock: Clock = time.monotonic,
        generator_url: str = "",
        resolve_hold_seconds: float = 30.0,
        **dispatcher_options: Any,
    ) -> None:
        self.config = config
        self.state_dir = state_dir
        self.metrics = metrics
        self.clock = clock
        self.engine = AlertEngine(
            host, config, resolve_hold_seconds=resolve_hold_seconds, generator_url=generator_url
        )
        self.incidents = Incidents(config)
        self._dispatcher_options = dispatcher_options
        self._outbox: Outbox | None = None
        self._dispatcher: Dispatcher | None = None

    async def start(self) -> None:
        outbox = await asyncio.to_thread(Outbox, self.state_dir / OUTBOX_FILE)
        self._outbox = outbox
        try:
            state = outbox.load_state()
        except OutboxError as exc:
            log.error("alerts_state_unreadable", error=str(exc))
            state = None
        restored = self.engine.restore(state, self.clock())
        if isinstance(state, dict):
            self.incidents.restore(state.get("incidents"), self.clock())
        if restored:
            log.info("alerts_restored", firing=restored)
        self._dispatcher = Dispatcher(
            outbox,
            self.config.sinks,
            self.metrics,
            self.clock,
            **{
                "max_retry_after_seconds": self.config.max_retry_after_seconds,
                **self._dispatcher_options,
            },
        )
        await self._dispatcher.start()
        self._update_gauge()

    def observe(
        self, active: Iterable[Condition], now: float | None = None, wall: datetime | None = None
    ) -> list[Notification]:
        """Evaluate this tick's conditions; store and dispatch what fires or resolves: every
        alert to Alertmanager sinks, the incidents' pages to the others."""
        if self._dispatcher is None:
            raise RuntimeError("AlertPipeline.observe() before start()")
        active = list(active)
        now = self.clock() if now is None else now
        wall = wall or datetime.now(UTC)
        notifications, pages = evaluate(self.engine, self.incidents, active, now, wall)
        if notifications or pages:
            state = {**self.engine.snapshot(), "incidents": self.incidents.snapshot()}
            self._dispatcher.enqueue(notifications, engine_state=state, pages=pages)
            for n in notifications:
                log.info(
                    "alert_" + ("fired" if n.is_firing else "resolved"),
                    alertname=n.alert.alertname,
                    labels=dict(n.alert.labels),
                    notification_id=n.id,
                )
            for page in pages:
                if page.incident is not None:
                    log.info(
                        "incident_" + ("opened" if page.incident.update == 0 else "updated"),
                        incident=page.incident.key,
                        status=page.status,
                        update=page.incident.update,
                        alerts=[
                            " ".join((m.alert.alertname, m.alert.labels.get("slot", "-"), m.status))
                            for m in page.incident.members
                        ],
                    )
            self._update_gauge()
        return notifications

    def firing(self) -> list[Alert]:
        return self.engine.firing()

    def confirm(self, conditions: Iterable[Condition]) -> None:
        """A fresh fleet poll still shows these conditions: their firing fleet-wide alerts are
        re-posted to Alertmanager now (and only then: see :mod:`~tunnelkeeper.alerts.resend`)."""
        if self._dispatcher is None:
            return
        firing = {a.fingerprint for a in self.engine.firing()}
        shown = {self.engine.fingerprint_of(c) for c in conditions}
        if shown & firing:
            self._dispatcher.confirm(shown & firing)

    def next_deadline(self) -> float | None:
        """When :meth:`observe` must run next for a page to leave on time (a pending alert's
        hold running out, a resolve hold, an incident's update window), or None."""
        times = [t for t in (self.engine.next_deadline(), self.incidents.next_deadline()) if t]
        return min(times) if times else None

    def status(self) -> dict[str, Any]:
        """JSON-able view for ``tunnelkeeper status``."""
        return {
            "firing": [
                {
                    "alertname": a.alertname,
                    "labels": dict(a.labels),
                    "summary": a.annotations.get("summary", ""),
                    "fired_at": rfc3339(a.fired_at),
                }
                for a in self.engine.firing()
            ],
            "sinks": self._dispatcher.sink_status() if self._dispatcher else [],
            "outbox_durable": bool(self._outbox and self._outbox.is_durable),
        }

    def _update_gauge(self) -> None:
        counts = dict.fromkeys(ALERT_NAMES, 0)
        for alert in self.engine.firing():
            counts[alert.alertname] = counts.get(alert.alertname, 0) + 1
        for name, count in counts.items():
            self.metrics.alerts_firing.labels(alertname=name).set(count)

    async def aclose(self) -> None:
        if self._dispatcher is not None:
            await self._dispatcher.aclose()
            self._dispatcher = None
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None
