"""The alert engine, as pure logic with an explicit clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tunnelkeeper.alerts import ALERT_NAMES, AlertEngine, Condition
from tunnelkeeper.config.model import AlertOverride, AlertsConfig

T0 = datetime(2026, 1, 10, 9, 0, 0, tzinfo=UTC)
NOEDGE = Condition("ReplicaNoEdgeConnections", {"tunnel": "portal", "slot": "1"})


def at(seconds: float) -> tuple[float, datetime]:
    return 1000.0 + seconds, T0 + timedelta(seconds=seconds)


def run(
    engine: AlertEngine, timeline: list[tuple[float, list[Condition]]]
) -> list[tuple[float, str]]:
    out = []
    for t, active in timeline:
        for n in engine.evaluate(active, *at(t)):
            out.append((t, n.status))
    return out


def test_catalog_has_the_nine_spec_names_plus_the_upgrade_alert() -> None:
    assert set(ALERT_NAMES) == {
        "CloudflaredUpgradeFailed",  # an extension of the SPEC's list (issue 6)
        "ReplicaDown",
        "ReplicaNoEdgeConnections",
        "TunnelDegraded",
        "TunnelDown",
        "ReplicaCrashLooping",
        "TokenRotationFailed",
        "TokenSourceUnavailable",
        "FleetConnectorsLow",
        "CloudflaredOutdated",
    }


def test_fires_once_after_for_seconds_then_resolves_once_after_the_hold() -> None:
    engine = AlertEngine("origin-01", AlertsConfig(for_seconds=5), resolve_hold_seconds=10)
    ticks = [(float(t), [NOEDGE]) for t in range(0, 20)] + [(float(t), []) for t in range(20, 40)]
    assert run(engine, ticks) == [(5.0, "firing"), (30.0, "resolved")]
    assert engine.firing() == []


def test_condition_that_clears_before_for_seconds_pages_nobody() -> None:
    engine = AlertEngine("origin-01", AlertsConfig(for_seconds=5), resolve_hold_seconds=10)
    # active 0..4 (4 s), clear at 5, active again 6..10: the streak restarts, so nothing by 10
    ticks = [(float(t), [NOEDGE]) for t in range(0, 5)] + [(5.0, [])]
    ticks += [(float(t), [NOEDGE]) for t in range(6, 11)]
    assert run(engine, ticks) == []
    assert run(engine, [(11.0, [NOEDGE])]) == [(11.0, "firing")]


def test_flapping_inside_the_hold_stays_one_page() -> None:
    engine = AlertEngine("origin-01", AlertsConfig(for_seconds=2), resolve_hold_seconds=10)
    ticks = []
    for t in range(0, 60):
        flapping = (t // 3) % 2 == 0  # 3 s up, 3 s down, for a minute
        ticks.append((float(t), [NOEDGE] if flapping else []))
    ticks += [(float(t), []) for t in range(60, 80)]
    events = run(engine, ticks)
    assert [status for _, status in events] == ["firing", "resolved"]
    assert events[1][0] >= 60


def test_firing_alert_carries_identity_labels_and_annotations() -> None:
    engine = AlertEngine("origin-01", AlertsConfig(for_seconds=0), generator_url="http://h/status")
    cond = Condition(
        "ReplicaNoEdgeConnections", {"tunnel": "portal", "slot": "1"}, details={"connections": "0"}
    )
    (n,) = engine.evaluate([cond], *at(0))
    assert dict(n.alert.labels) == {
        "alertname": "ReplicaNoEdgeConnections",
        "tunnel": "portal",
        "slot": "1",
        "host": "origin-01",
        "severity": "critical",
    }
    assert n.alert.annotations["summary"] == (
        "replica 1 of portal is alive but has 0 edge connections"
    )
    assert n.alert.annotations["connections"] == "0"
    assert n.alert.annotations["runbook"]
    assert n.alert.generator_url == "http://h/status"


def test_volatile_details_do_not_change_identity() -> None:
    engine = AlertEngine("origin-01", AlertsConfig(for_seconds=0))
    first = Condition(
        "TunnelDegraded", {"tunnel": "portal"}, details={"ready": "1", "desired": "2"}
    )
    later = Condition(
        "TunnelDegraded", {"tunnel": "portal"}, details={"ready": "0", "desired": "2"}
    )
    (fired,) = engine.evaluate([first], *at(0))
    assert fired.alert.annotations["summary"] == "portal has 1 of 2 replicas ready on this host"
    assert engine.evaluate([later], *at(1)) == []
    (alert,) = engine.firing()
    assert alert.fingerprint == fired.alert.fingerprint
    assert alert.annotations["summary"] == "portal has 0 of 2 replicas ready on this host"


def test_overrides_disable_delay_and_reseverity() -> None:
    config = AlertsConfig(
        for_seconds=5,
        overrides={
            "CloudflaredOutdated": AlertOverride(enabled=False),
            "TunnelDown": AlertOverride(for_seconds=0, severity="warning"),
        },
    )
    engine = AlertEngine("origin-01", config)
    outdated = Condition("CloudflaredOutdated", {"tunnel": "portal"})
    down = Condition("TunnelDown", {"tunnel": "portal"})
    events = [n for t in range(0, 30) for n in engine.evaluate([outdated, down], *at(t))]
    assert [(n.alert.alertname, n.status) for n in events] == [("TunnelDown", "firing")]
    assert events[0].alert.labels["severity"] == "warning"


def test_fleet_wide_alert_has_one_identity_across_hosts() -> None:
    cond = Condition("FleetConnectorsLow", {"tunnel": "portal", "host": "ignored"})
    a = AlertEngine("origin-01", AlertsConfig(for_seconds=0)).evaluate([cond], *at(0))[0]
    b = AlertEngine("origin-02", AlertsConfig(for_seconds=0)).evaluate([cond], *at(7))[0]
    assert "host" not in a.alert.labels
    assert a.alert.fingerprint == b.alert.fingerprint
    assert a.alert.dedup_key == b.alert.dedup_key
    assert a.alert.source == "fleet"
    # a per-host alert differs between hosts
    local = Condition("TunnelDown", {"tunnel": "portal"})
    c = AlertEngine("origin-01", AlertsConfig(for_seconds=0)).evaluate([local], *at(0))[0]
    d = AlertEngine("origin-02", AlertsConfig(for_seconds=0)).evaluate([local], *at(0))[0]
    assert c.alert.fingerprint != d.alert.fingerprint
    assert c.alert.dedup_key != d.alert.dedup_key


def test_notification_ids_are_stable_and_distinct() -> None:
    engine = AlertEngine("origin-01", AlertsConfig(for_seconds=0), resolve_hold_seconds=0)
    (fired,) = engine.evaluate([NOEDGE], *at(0))
    (resolved,) = engine.evaluate([], *at(1))
    assert fired.id != resolved.id
    assert fired.id.startswith(fired.alert.fingerprint)
    assert "." not in fired.id  # Standard Webhooks ids may not contain dots
    (again,) = engine.evaluate([NOEDGE], *at(2))
    assert again.id not in (fired.id, resolved.id)  # a new episode, a new id


def test_snapshot_restore_keeps_firing_without_refiring_and_resolves_what_cleared() -> None:
    engine = AlertEngine("origin-01", AlertsConfig(for_seconds=0), resolve_hold_seconds=10)
    down = Condition("TunnelDown", {"tunnel": "portal"})
    fired = {n.alert.alertname: n for n in engine.evaluate([NOEDGE, down], *at(0))}
    snapshot = engine.snapshot()

    restarted = AlertEngine("origin-01", AlertsConfig(for_seconds=0), resolve_hold_seconds=10)
    assert restarted.restore(snapshot, now=5000.0) == 2
    assert len(restarted.firing()) == 2
    # after the restart only NOEDGE is still true: no re-fire, and TunnelDown resolves after hold
    assert restarted.evaluate([NOEDGE], 5000.0, T0 + timedelta(hours=1)) == []
    (resolved,) = restarted.evaluate([NOEDGE], 5010.0, T0 + timedelta(hours=1, seconds=10))
    assert resolved.status == "resolved"
    assert resolved.alert.alertname == "TunnelDown"
    assert resolved.alert.fired_at == fired["TunnelDown"].alert.fired_at
    assert resolved.id == fired["TunnelDown"].id.replace("firing", "resolved")


def test_restore_ignores_garbage() -> None:
    engine = AlertEngine("origin-01", AlertsConfig())
    assert engine.restore(None, 0.0) == 0
    assert engine.restore({"version": 1, "firing": "x"}, 0.0) == 0
    assert engine.restore({"version": 1, "firing": [{"alertname": 3}, 7, {}]}, 0.0) == 0
    assert engine.firing() == []


def test_same_condition_twice_in_one_tick_is_one_alert() -> None:
    engine = AlertEngine("origin-01", AlertsConfig(for_seconds=0))
    assert len(engine.evaluate([NOEDGE, NOEDGE], *at(0))) == 1
