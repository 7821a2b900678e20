"""``tunnelkeeper test-alert``: a TunnelkeeperTest firing, then its resolve, through every sink.

Sent directly (not through the outbox schedule), so the command reports each sink's real answer.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tunnelkeeper.alertcatalog import TEST_ALERT, render
from tunnelkeeper.alerts.delivery import post
from tunnelkeeper.alerts.notification import FIRING, RESOLVED, Alert, Notification
from tunnelkeeper.alerts.retry import Outcome
from tunnelkeeper.config.model import Config, SinkConfig
from tunnelkeeper.metrics import Metrics

if TYPE_CHECKING:
    import httpx


@dataclass(frozen=True)
class SinkResult:
    sink: str
    kind: str
    error: str | None = None  # None: both the firing and the resolve were accepted

    @property
    def is_delivered(self) -> bool:
        return self.error is None


def test_alert(host: str, wall: datetime) -> Alert:
    labels = {"alertname": TEST_ALERT.name, "host": host, "severity": TEST_ALERT.severity}
    return Alert(
        alertname=TEST_ALERT.name,
        labels=labels,
        annotations={
            "summary": render(TEST_ALERT.summary, labels),
            "runbook": TEST_ALERT.runbook,
        },
        severity=TEST_ALERT.severity,
        active_at=wall,
        fired_at=wall,
    )


async def _send_one(
    sink: SinkConfig, alert: Alert, metrics: Metrics, transport: httpx.AsyncBaseTransport | None
) -> SinkResult:
    import httpx  # the daemon loads it only when a test alert is sent

    async with httpx.AsyncClient(
        timeout=httpx.Timeout(sink.timeout_seconds), follow_redirects=False, transport=transport
    ) as client:
        for n in (
            Notification(FIRING, alert),
            Notification(RESOLVED, alert, ends_at=datetime.now(UTC)),
        ):
            outcome, text, _ = await post(client, sink, [n])
            result = "delivered" if outcome is Outcome.DELIVERED else "failed"
            metrics.alert_deliveries.labels(sink=sink.name, result=result).inc()
            if outcome is not Outcome.DELIVERED:
                return SinkResult(sink.name, sink.kind, f"{n.status}: {text}")
    return SinkResult(sink.name, sink.kind)


async def send_test_alerts(
    config: Config, metrics: Metrics, *, transport: httpx.AsyncBaseTransport | None = None
) -> list[SinkResult]:
    """Send the test alert through every configured sink concurrently; one result per sink."""
    alert = test_alert(config.daemon.host, datetime.now(UTC))
    return list(
        await asyncio.gather(
            *(_send_one(sink, alert, metrics, transport) for sink in config.alerts.sinks)
        )
    )


def test_alert_command(config_path: str) -> int:
    from tunnelkeeper.config.load import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"tunnelkeeper test-alert: {exc}", file=sys.stderr)
        return 1
    if not config.alerts.sinks:
        print(f"tunnelkeeper test-alert: no [[alerts.sink]] in {config_path}", file=sys.stderr)
        return 1
    results = asyncio.run(send_test_alerts(config, Metrics()))
    width = max(len(r.sink) for r in results)
    for r in results:
        verdict = "delivered" if r.is_delivered else f"FAILED  {r.error}"
        print(f"{r.sink:<{width}}  {r.kind:<12}  {verdict}")
    return 0 if all(r.is_delivered for r in results) else 1
