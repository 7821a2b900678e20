"""AlertPipeline: the daemon-facing facade, across a restart."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.alerts.conftest import deliveries
from tests.alerts.receiver import Receiver
from tests.alerts.samples import is_firing_post
from tests.waiting import await_until
from tunnelkeeper.alerts import AlertPipeline, Condition
from tunnelkeeper.config.model import AlertsConfig, SinkConfig
from tunnelkeeper.metrics import Metrics

T0 = datetime(2026, 1, 10, 9, 0, 0, tzinfo=UTC)
DOWN = Condition("TunnelDown", {"tunnel": "portal"})


def firing_gauge(metrics: Metrics, alertname: str) -> float | None:
    return metrics.registry.get_sample_value("tunnelkeeper_alerts_firing", {"alertname": alertname})


def pipeline(state: Path, metrics: Metrics, *sinks: SinkConfig) -> AlertPipeline:
    return AlertPipeline(
        "origin-01",
        AlertsConfig(for_seconds=0, sinks=sinks),
        state,
        metrics,
        resolve_hold_seconds=0,
        resend_interval_seconds=0.2,
    )


async def _true(value: bool) -> bool:
    return value


async def test_gauge_status_and_restart_resend(
    tmp_path: Path, receivers: Callable[..., Receiver], metrics: Metrics
) -> None:
    am = receivers()
    sink = SinkConfig(kind="alertmanager", name="am", url=am.url)
    first = pipeline(tmp_path, metrics, sink)
    await first.start()
    try:
        assert firing_gauge(metrics, "TunnelDown") == 0  # every catalog alert has a series
        (fired,) = first.observe([DOWN], now=0.0, wall=T0)
        assert firing_gauge(metrics, "TunnelDown") == 1
        status = first.status()
        assert [a["alertname"] for a in status["firing"]] == ["TunnelDown"]
        assert status["outbox_durable"] is True
        assert status["sinks"][0]["sink"] == "am"
        await await_until(lambda: _true(deliveries(metrics, "am", "delivered") == 1))
    finally:
        await first.aclose()

    # after a restart nothing new is observed yet: the firing alert is still re-posted
    seen = len(am.received())
    restarted_metrics = Metrics()
    second = pipeline(tmp_path, restarted_metrics, sink)
    await second.start()
    try:
        assert [a.fingerprint for a in second.firing()] == [fired.alert.fingerprint]
        assert firing_gauge(restarted_metrics, "TunnelDown") == 1
        await await_until(lambda: _true(len(am.received()) > seen), what="re-post after restart")
        assert is_firing_post(am.received()[-1].json()[0])
        (resolved,) = second.observe([], now=10.0, wall=T0 + timedelta(seconds=10))
        assert resolved.id == fired.id.replace("-firing", "-resolved")
        assert firing_gauge(restarted_metrics, "TunnelDown") == 0
        await await_until(lambda: _true(deliveries(restarted_metrics, "am", "delivered") == 1))
        assert am.received()[-1].json()[0]["endsAt"] == "2026-01-10T09:00:10.000Z"
    finally:
        await second.aclose()
