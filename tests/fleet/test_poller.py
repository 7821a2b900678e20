"""The fleet view against a real simulator and real cloudflared-sim connectors."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.fleet.conftest import Connector, FakeClock, fleet_config, tunnel_config
from tests.harness import Sim
from tests.waiting import await_until
from tunnelkeeper.cloudflare.api import CloudflareAPI
from tunnelkeeper.cloudflare.fleet import FleetPoller
from tunnelkeeper.config.model import FileSourceConfig, TunnelConfig
from tunnelkeeper.metrics import Metrics


def samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = metrics.exposition().decode()
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def tunnel_view(poller: FleetPoller, name: str) -> dict[str, Any]:
    return next(t for t in poller.snapshot()["tunnels"] if t["name"] == name)


async def test_live_connectors_colos_and_fleet_condition(
    tmp_path: Path,
    sim_factory: Callable[..., Sim],
    connector_factory: Callable[[Sim, str], Connector],
    api_factory: Callable[[Sim], CloudflareAPI],
) -> None:
    sim = sim_factory(["portal", "idle"])
    first, second = connector_factory(sim, "portal"), connector_factory(sim, "portal")
    for c in (first, second):
        c.wait_connections(4)
    local: set[str] = {first.connector_id(), second.connector_id()}
    metrics = Metrics()
    no_id = TunnelConfig("local-only", FileSourceConfig(tmp_path / "x.token"))
    poller = FleetPoller(
        fleet_config(sim, tmp_path),
        [tunnel_config(sim, "portal", expected=3), tunnel_config(sim, "idle"), no_id],
        metrics,
        api=api_factory(sim),
        local_connectors=lambda name: set(local) if name == "portal" else set(),
    )
    await poller.poll_once()

    portal = tunnel_view(poller, "portal")
    assert portal["live_connectors"] == 2
    assert portal["status"] == "healthy"
    colos = portal["colo_connections"]
    assert isinstance(colos, dict) and sum(colos.values()) == 8 and len(colos) == 2
    assert portal["unknown_local"] == [] and portal["foreign"] == []
    assert tunnel_view(poller, "idle")["status"] == "inactive"
    assert [t["name"] for t in poller.snapshot()["tunnels"]] == ["portal", "idle"]
    exported = samples(metrics, "tunnelkeeper_fleet_connectors")
    assert exported == {(("tunnel", "idle"),): 0.0, (("tunnel", "portal"),): 2.0}
    per_colo = samples(metrics, "tunnelkeeper_fleet_colo_connections")
    assert sum(v for k, v in per_colo.items() if ("tunnel", "portal") in k) == 8
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=metrics.exposition(), capture_output=True
    )
    assert (lint.returncode, lint.stderr) == (0, b"")

    # 2 live < 3 expected: one fleet-wide identity, no host label
    (low,) = poller.conditions()
    assert low.alertname == "FleetConnectorsLow"
    assert dict(low.labels) == {"tunnel": "portal"}
    assert dict(low.details) == {"connectors": "2", "expected": "3"}

    third = connector_factory(sim, "portal")
    third.wait_connections(1)
    local.add(third.connector_id())
    await poller.poll_once()
    assert tunnel_view(poller, "portal")["live_connectors"] == 3
    assert poller.conditions() == []


async def test_partition_counts_only_live_connections(
    tmp_path: Path,
    sim_factory: Callable[..., Sim],
    connector_factory: Callable[[Sim, str], Connector],
    api_factory: Callable[[Sim], CloudflareAPI],
) -> None:
    sim = sim_factory(["portal"])
    healthy, victim = connector_factory(sim, "portal"), connector_factory(sim, "portal")
    for c in (healthy, victim):
        c.wait_connections(2)
    victim_id = victim.connector_id()
    metrics = Metrics()
    poller = FleetPoller(
        fleet_config(sim, tmp_path),
        [tunnel_config(sim, "portal", expected=2)],
        metrics,
        api=api_factory(sim),
        local_connectors=lambda _: {healthy.connector_id(), victim_id},
    )
    await poller.poll_once()
    assert tunnel_view(poller, "portal")["live_connectors"] == 2
    assert poller.conditions() == []

    sim.fault("partition", connector_id=victim_id)

    async def dropped() -> bool:
        await poller.poll_once()
        return bool(tunnel_view(poller, "portal")["live_connectors"] == 1)

    await await_until(dropped, timeout=20, what="the partitioned connector to stop counting")
    view = tunnel_view(poller, "portal")
    listed = {c["id"]: c for c in view["connectors"]}
    # still listed by the API, but only with connections pending reconnect
    assert listed[victim_id]["live_connections"] == 0
    assert listed[victim_id]["pending_connections"] > 0
    assert view["status"] == "degraded"
    assert samples(metrics, "tunnelkeeper_fleet_connectors") == {(("tunnel", "portal"),): 1.0}
    assert [c.details["connectors"] for c in poller.conditions()] == ["1"]

    sim.fault("heal")

    async def back() -> bool:
        await poller.poll_once()
        return bool(tunnel_view(poller, "portal")["live_connectors"] == 2)

    await await_until(back, timeout=30, what="the healed connector to count again")
    assert poller.conditions() == []


async def test_cross_check_unknown_local_and_foreign(
    tmp_path: Path,
    sim_factory: Callable[..., Sim],
    connector_factory: Callable[[Sim, str], Connector],
    api_factory: Callable[[Sim], CloudflareAPI],
) -> None:
    sim = sim_factory(["portal"])
    mine, elsewhere = connector_factory(sim, "portal"), connector_factory(sim, "portal")
    for c in (mine, elsewhere):
        c.wait_connections(1)
    ghost = str(uuid.uuid4())  # a local replica whose connector the edge does not list
    poller = FleetPoller(
        fleet_config(sim, tmp_path),
        [tunnel_config(sim, "portal")],
        Metrics(),
        api=api_factory(sim),
        local_connectors=lambda _: {mine.connector_id().upper(), ghost},
    )
    await poller.poll_once()
    view = tunnel_view(poller, "portal")
    assert view["unknown_local"] == [ghost]
    assert view["foreign"] == [elsewhere.connector_id()]
    flags = {c["id"]: c["is_local"] for c in view["connectors"]}
    assert flags == {mine.connector_id(): True, elsewhere.connector_id(): False}
    assert poller.conditions() == []  # no expected_connectors: nothing to alert on


async def test_api_errors_are_reported_and_stale_data_is_not_acted_on(
    tmp_path: Path,
    sim_factory: Callable[..., Sim],
    connector_factory: Callable[[Sim, str], Connector],
    api_factory: Callable[[Sim], CloudflareAPI],
) -> None:
    sim = sim_factory(["portal"])
    connector_factory(sim, "portal").wait_connections(1)
    clock = FakeClock()
    metrics = Metrics()
    api = api_factory(sim)
    poller = FleetPoller(
        fleet_config(sim, tmp_path),
        [tunnel_config(sim, "portal", expected=2)],
        metrics,
        api=api,
        local_connectors=lambda _: set(),
        clock=clock,
    )
    await poller.poll_once()
    assert len(poller.conditions()) == 1

    sim.stop()  # the API goes away
    clock.advance(poller.interval_seconds)
    await poller.poll_once()
    view = tunnel_view(poller, "portal")
    assert "unreachable" in str(view["error"])
    assert view["live_connectors"] == 1 and len(poller.conditions()) == 1  # last known, fresh

    clock.advance(poller.stale_after_seconds + 1)
    await poller.poll_once()
    view = tunnel_view(poller, "portal")
    assert view["is_stale"] is True and view["live_connectors"] is None
    assert poller.conditions() == []
    assert samples(metrics, "tunnelkeeper_fleet_connectors") == {}
    assert samples(metrics, "tunnelkeeper_fleet_colo_connections") == {}
