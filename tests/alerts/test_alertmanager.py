"""The alertmanager sink against a real Alertmanager, whose webhook reaches our receiver."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.servers import Alertmanager
from tests.waiting import await_until
from tunnelkeeper.alerts import AlertPipeline, Condition
from tunnelkeeper.config.model import AlertsConfig, SinkConfig
from tunnelkeeper.metrics import Metrics


async def test_alert_reaches_alertmanager_receiver_firing_then_resolved(
    tmp_path: Path, alertmanager: Alertmanager, metrics: Metrics
) -> None:
    sink = SinkConfig(kind="alertmanager", name="am", url=alertmanager.url)
    pipeline = AlertPipeline(
        "origin-01",
        AlertsConfig(for_seconds=0, sinks=(sink,)),
        tmp_path / "state",
        metrics,
        resolve_hold_seconds=0,
        generator_url="http://127.0.0.1:9105/status",
        resend_interval_seconds=5.0,
    )
    await pipeline.start()
    try:
        cond = Condition("TunnelDown", {"tunnel": "portal"})
        start = datetime.now(UTC)
        (fired,) = pipeline.observe([cond], now=0.0, wall=start)
        firing = await _webhook(alertmanager, "firing")
        alert = firing["alerts"][0]
        assert alert["labels"] == dict(fired.alert.labels)
        assert alert["annotations"]["summary"] == "portal has no ready replica on this host"
        assert alert["generatorURL"] == "http://127.0.0.1:9105/status"
        amtool_view = httpx.get(f"{alertmanager.url}/api/v2/alerts", timeout=5).json()
        assert [a["labels"]["alertname"] for a in amtool_view] == ["TunnelDown"]

        (resolved,) = pipeline.observe([], now=1.0, wall=start + timedelta(seconds=1))
        assert resolved.status == "resolved"
        done = await _webhook(alertmanager, "resolved")
        assert done["alerts"][0]["labels"] == dict(fired.alert.labels)
        assert done["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
    finally:
        await pipeline.aclose()


async def _webhook(am: Alertmanager, status: str) -> dict[str, Any]:
    async def arrived() -> dict[str, Any]:
        for r in am.webhook.received("/hook"):
            body: dict[str, Any] = r.json()
            if body["status"] == status:
                return body
        return {}

    return await await_until(arrived, timeout=30, what=f"alertmanager webhook {status}")


EXAMPLE = Path(__file__).resolve().parents[2] / "monitoring/alertmanager/alertmanager.example.yml"


async def test_the_shipped_alertmanager_config_makes_a_dns_outage_one_incident_with_tunnel_down(
    tmp_path: Path, make_alertmanager: Callable[[str], Alertmanager], metrics: Metrics
) -> None:
    """Every alert goes to Alertmanager as it is; the shipped example's group_by and
    inhibit_rules make the replicas' alerts of a downed tunnel silent there too, and leave the
    fleet-wide alert alone."""
    text = EXAMPLE.read_text().replace(
        "http://127.0.0.1:9999/replace-with-your-receiver", "WEBHOOK_URL"
    )
    am = make_alertmanager(text)
    sink = SinkConfig(kind="alertmanager", name="am", url=am.url)
    pipeline = AlertPipeline(
        "origin-01", AlertsConfig(for_seconds=0, sinks=(sink,)), tmp_path / "state", metrics
    )
    await pipeline.start()
    try:
        outage = [
            Condition("TunnelDown", {"tunnel": "portal"}),
            *(Condition("ReplicaDown", {"tunnel": "portal", "slot": str(s)}) for s in (0, 1)),
            *(
                Condition("ReplicaCrashLooping", {"tunnel": "portal", "slot": str(s)})
                for s in (0, 1)
            ),
        ]
        sent = pipeline.observe(outage, now=0.0)
        assert len(sent) == 5  # Alertmanager gets all of them
        first = await _webhook(am, "firing")
        assert [a["labels"]["alertname"] for a in first["alerts"]] == ["TunnelDown"]
        assert first["groupLabels"] == {"host": "origin-01", "tunnel": "portal"}
        fleet = Condition("FleetConnectorsLow", {"tunnel": "portal"})
        pipeline.observe([*outage, fleet], now=1.0)

        async def fleet_page() -> list[dict[str, Any]]:
            return [
                r.json()
                for r in am.webhook.received("/hook")
                if r.json()["groupLabels"].get("alertname") == "FleetConnectorsLow"
            ]

        await await_until(fleet_page, timeout=30, what="the fleet-wide alert, not inhibited")
        told = {
            a["labels"]["alertname"]
            for r in am.webhook.received("/hook")
            for a in r.json()["alerts"]
        }
        assert told == {"TunnelDown", "FleetConnectorsLow"}
    finally:
        await pipeline.aclose()
