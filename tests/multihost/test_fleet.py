"""Issue 7, multi-host: three origin hosts (network namespaces) each run `tunnelkeeper run` with
one replica of tunnel "portal" against one `tunnelkeeper sim`, one real Alertmanager and one real
Prometheus in a hub namespace.

The tests share one rig and run in order: healthy fleet; one host's network down (one page,
resolved when it returns, traffic keeps flowing); one host's daemon killed (Prometheus fires
TunnelkeeperDown for it).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.multihost.conftest import Fleet
from tests.multihost.hosts import EXPECTED_CONNECTORS, TUNNEL
from tests.multihost.hub import alertmanager_alerts, prometheus_get
from tests.waiting import wait_until

pytestmark = pytest.mark.system

FLEET_ALERT = "FleetConnectorsLow"
HOSTS = {"h1", "h2", "h3"}


def _connector_id(fleet: Fleet, host: str) -> str:
    (replica,) = fleet.in_hub(fleet.daemons[host].primaries, TUNNEL)
    return str(replica["connector_id"]).lower()


def _live_ids(fleet: Fleet) -> set[str]:
    return {c.lower() for c in fleet.in_hub(fleet.sim.live_connector_ids, TUNNEL)}


def _fleet_alerts(fleet: Fleet, since: int) -> list[dict[str, Any]]:
    """FleetConnectorsLow entries of every webhook post after the first ``since`` posts, each as
    {"status", "labels", "fingerprint", "post"} (post: its index among those posts)."""
    out = []
    for i, post in enumerate(fleet.webhook.received("/hook")[since:]):
        for alert in post.json()["alerts"]:
            if alert["labels"].get("alertname") == FLEET_ALERT:
                out.append(
                    {
                        "status": alert["status"],
                        "labels": alert["labels"],
                        "fingerprint": alert["fingerprint"],
                        "post": i,
                    }
                )
    return out


def _firing_on(fleet: Fleet, host: str) -> bool:
    return f"{FLEET_ALERT}/{TUNNEL}" in fleet.daemons[host].status()["alerts_firing"]


def _sees_full_fleet(fleet: Fleet, host: str) -> bool:
    (view,) = fleet.daemons[host].status()["fleet"]["tunnels"]
    return bool(view["live_connectors"] == EXPECTED_CONNECTORS)


def _outbox_empty(fleet: Fleet, host: str) -> bool:
    return "\ntunnelkeeper_alert_outbox_pending 0.0\n" in fleet.daemons[host].metrics()


def _alertmanager_has_fleet_alert() -> bool:
    return any(a["labels"].get("alertname") == FLEET_ALERT for a in alertmanager_alerts())


def _wait_fleet_calm(fleet: Fleet, hosts: set[str], timeout: float) -> None:
    """No FleetConnectorsLow anywhere: these hosts see every connector (so none is about to
    fire) and fire none, nothing is left to deliver, none is active in Alertmanager, and the
    receiver got the resolve of any that fired."""

    def calm() -> bool:
        latest = {a["fingerprint"]: a["status"] for a in _fleet_alerts(fleet, 0)}
        return (
            all(
                _sees_full_fleet(fleet, h) and not _firing_on(fleet, h) and _outbox_empty(fleet, h)
                for h in hosts
            )
            and not _alertmanager_has_fleet_alert()
            and "firing" not in latest.values()  # a resolve Alertmanager has yet to send
        )

    fleet.in_hub(wait_until, calm, timeout=timeout, interval=0.25, what="no FleetConnectorsLow")


def test_three_hosts_serve_the_tunnel_and_are_scraped(fleet: Fleet) -> None:
    local = {host: _connector_id(fleet, host) for host in HOSTS}
    assert len(set(local.values())) == 3, local

    def all_live() -> set[str] | None:
        ids = _live_ids(fleet)
        return ids if len(ids) == EXPECTED_CONNECTORS else None

    live = fleet.in_hub(wait_until, all_live, timeout=30, what="3 live connectors in the API")
    assert live == set(local.values())

    def targets_up() -> set[str] | None:
        active = prometheus_get("/api/v1/targets", state="active")["activeTargets"]
        up = {t["labels"]["host"] for t in active if t["health"] == "up"}
        return up if up == HOSTS else None

    fleet.in_hub(wait_until, targets_up, timeout=40, interval=0.25, what="3 targets up")

    def every_host_counts_three() -> dict[str, str] | None:
        result = prometheus_get("/api/v1/query", query="tunnelkeeper_fleet_connectors")["result"]
        seen = {r["metric"]["host"]: r["value"][1] for r in result}
        return seen if seen == dict.fromkeys(HOSTS, str(EXPECTED_CONNECTORS)) else None

    fleet.in_hub(
        wait_until, every_host_counts_three, timeout=30, interval=0.25, what="fleet_connectors"
    )
    _wait_fleet_calm(fleet, HOSTS, timeout=30)


def test_host_down_pages_once_and_resolves_while_traffic_flows(fleet: Fleet) -> None:
    _wait_fleet_calm(fleet, HOSTS, timeout=30)
    mark = len(fleet.webhook.received("/hook"))
    h3 = _connector_id(fleet, "h3")
    assert h3 in _live_ids(fleet)

    fleet.topo.set_link("h3", "down")
    try:
        # The edge notices the silent connector by its heartbeat, some seconds later.
        fleet.in_hub(
            wait_until,
            lambda: (ids := _live_ids(fleet)) and h3 not in ids and len(ids) == 2,
            timeout=45,
            interval=0.25,
            what="the edge to drop h3's connector",
        )
        with fleet.load() as load:
            (fired, *_) = wait_until(
                lambda: [a for a in _fleet_alerts(fleet, mark) if a["status"] == "firing"],
                timeout=30,
                what="FleetConnectorsLow at the webhook receiver",
            )
            # Both hosts that can still see the API raise it, and both delivered it.
            fleet.in_hub(
                wait_until,
                lambda: all(_firing_on(fleet, h) and _outbox_empty(fleet, h) for h in ("h1", "h2")),
                timeout=30,
                interval=0.25,
                what="FleetConnectorsLow firing and delivered on h1 and h2",
            )
            wait_until(lambda: load.results["ok"] >= 30, timeout=30, what="requests served")
            fleet.topo.set_link("h3", "up")

            wait_until(
                lambda: [
                    a
                    for a in _fleet_alerts(fleet, mark)
                    if a["status"] == "resolved" and a["post"] > fired["post"]
                ],
                timeout=60,
                interval=0.25,
                what="FleetConnectorsLow resolved at the webhook receiver",
            )
    finally:
        fleet.topo.set_link("h3", "up")
    assert load.total >= 30
    assert load.failed == 0, load.failures[:10]
    # h3's replica reconnects on cloudflared's own backoff (up to 32 s after a long cut), and a
    # first connection may drop again: it is back at the edge in the end
    fleet.in_hub(
        wait_until, lambda: h3 in _live_ids(fleet), timeout=60, interval=0.5, what="h3 back"
    )

    # Every host has settled: nothing firing, nothing left to send, Alertmanager resolved.
    _wait_fleet_calm(fleet, HOSTS, timeout=30)
    seen = _fleet_alerts(fleet, mark)
    identities = {tuple(sorted(a["labels"].items())) for a in seen}
    assert len(identities) == 1, identities
    assert len({a["fingerprint"] for a in seen}) == 1
    labels = seen[0]["labels"]
    assert "host" not in labels
    assert labels["tunnel"] == TUNNEL
    assert [a["status"] for a in seen] == ["firing", "resolved"], seen


def test_killed_daemon_fires_tunnelkeeper_down_in_prometheus(fleet: Fleet) -> None:
    h2 = fleet.daemons["h2"]
    (replica,) = fleet.in_hub(h2.primaries, TUNNEL)
    fleet.orphans.append(int(replica["pid"]))  # survives its daemon; stopped in teardown
    connector = str(replica["connector_id"]).lower()

    def targets_up() -> bool:
        active = prometheus_get("/api/v1/targets", state="active")["activeTargets"]
        return {t["labels"]["host"] for t in active if t["health"] == "up"} == HOSTS

    fleet.in_hub(wait_until, targets_up, timeout=40, interval=0.25, what="3 targets up")

    h2.proc.kill()
    h2.proc.wait(timeout=10)

    def down_alerts() -> list[dict[str, Any]] | None:
        alerts = prometheus_get("/api/v1/alerts")["alerts"]
        firing = [
            a
            for a in alerts
            if a["labels"]["alertname"] == "TunnelkeeperDown" and a["state"] == "firing"
        ]
        return firing if {a["labels"]["host"] for a in firing} == {"h2"} else None

    (alert,) = fleet.in_hub(
        wait_until, down_alerts, timeout=40, interval=0.25, what="TunnelkeeperDown for h2 only"
    )
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["instance"] == h2.url.removeprefix("http://")
    assert "h2" in alert["annotations"]["summary"]
    # Its replica outlives it (adopted on restart) and keeps serving at the edge.
    assert connector in _live_ids(fleet)
