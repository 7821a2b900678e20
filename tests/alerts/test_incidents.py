"""One incident, one page: inhibition and grouping, as the direct sinks see them.

Driven through the real engine and ``incidents.evaluate`` (what the daemon's pipeline calls)
with an explicit clock: for_seconds 2, resolve hold 10, group window 5.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tunnelkeeper.alerts import AlertEngine, Condition, Notification, formats
from tunnelkeeper.alerts.incidents import Incidents, evaluate
from tunnelkeeper.config.model import AlertsConfig

T0 = datetime(2026, 1, 10, 9, 0, 0, tzinfo=UTC)


def down(slot: int) -> Condition:
    return Condition("ReplicaDown", {"tunnel": "portal", "slot": str(slot)})


def looping(slot: int) -> Condition:
    return Condition("ReplicaCrashLooping", {"tunnel": "portal", "slot": str(slot)})


def dark(slot: int, tunnel: str = "portal") -> Condition:
    return Condition("ReplicaNoEdgeConnections", {"tunnel": tunnel, "slot": str(slot)})


TUNNEL_DOWN = Condition("TunnelDown", {"tunnel": "portal"})
DEGRADED = Condition("TunnelDegraded", {"tunnel": "portal"})
FLEET_LOW = Condition("FleetConnectorsLow", {"tunnel": "portal"})


class Host:
    """One host's engine and incidents, fed a timeline of condition sets."""

    def __init__(self, hold: float = 10.0, **alerts: Any) -> None:
        config = AlertsConfig(for_seconds=2.0, group_window_seconds=5.0, **alerts)
        self.engine = AlertEngine("origin-01", config, resolve_hold_seconds=hold)
        self.incidents = Incidents(config)
        self.pages: list[tuple[float, Notification]] = []
        self.every: list[Notification] = []

    def at(self, t: float, *active: Condition) -> list[Notification]:
        notes, pages = evaluate(
            self.engine, self.incidents, list(active), t, T0 + timedelta(seconds=t)
        )
        self.every += notes
        self.pages += [(t, p) for p in pages]
        return pages

    def run(self, start: float, end: float, *active: Condition, step: float = 0.5) -> None:
        t = start
        while t <= end:
            self.at(t, *active)
            t += step


def told(page: Notification) -> list[tuple[str, str, str]]:
    return sorted(
        (m.alert.alertname, m.alert.labels.get("slot", "-"), m.status) for m in page.members
    )


def test_every_replica_exiting_in_a_loop_is_one_incident_carrying_only_tunnel_down() -> None:
    host = Host()
    everything = (TUNNEL_DOWN, down(0), down(1), looping(0), looping(1))
    host.run(0, 30, *everything)
    host.run(30.5, 60)  # recovered: everything clears, and resolves after the hold
    assert [told(p) for _, p in host.pages] == [
        [("TunnelDown", "-", "firing")],
        [("TunnelDown", "-", "resolved")],
    ]
    (_, first), (_, last) = host.pages
    assert first.incident is not None and last.incident is not None
    assert first.incident.key == last.incident.key
    assert formats.dedup_key(first) == formats.dedup_key(last)
    assert formats.group_key(first) == formats.group_key(last)
    assert host.pages[0][0] == 2.0  # at for_seconds: no wait added
    # Alertmanager sinks still get every alert, one by one
    assert {n.alert.alertname for n in host.every} == {
        "TunnelDown",
        "ReplicaDown",
        "ReplicaCrashLooping",
    }


def test_a_replica_down_a_moment_before_its_sibling_does_not_page_ahead_of_the_tunnel() -> None:
    host = Host()
    host.at(0.0, down(0))  # one replica exits...
    host.run(0.1, 3, TUNNEL_DOWN, down(0), down(1))  # ...the other 0.1 s later
    assert [(t, told(p)) for t, p in host.pages] == [(2.1, [("TunnelDown", "-", "firing")])]


def test_a_single_replicas_death_still_pages_replica_down_at_once() -> None:
    host = Host()
    host.run(0, 3, down(1), DEGRADED)
    assert [(t, told(p)) for t, p in host.pages] == [
        (2.0, [("ReplicaDown", "1", "firing"), ("TunnelDegraded", "-", "firing")])
    ]
    page = host.pages[0][1]
    body = formats.webhook_payload(page, receiver="hook")
    assert body["groupKey"] == '{}:{host="origin-01", tunnel="portal"}'
    assert body["groupLabels"] == {"host": "origin-01", "tunnel": "portal"}
    assert len(body["alerts"]) == 2 and body["status"] == "firing"
    assert body["commonLabels"]["tunnel"] == "portal" and "slot" not in body["commonLabels"]


def test_alerts_after_the_first_page_are_one_update_per_window() -> None:
    host = Host(inhibit=False)
    host.run(0, 2, dark(0))  # first page at 2.0
    host.run(2.5, 4, dark(0), dark(1))  # slot 1 fires at 4.5: within the window
    host.run(4.5, 12, dark(0), dark(1), dark(2))  # slot 2 fires at 6.5: same window
    host.run(12.5, 30, dark(0), dark(1), dark(2), dark(3))  # slot 3 at 14.5: window long over
    assert [(t, told(p)) for t, p in host.pages] == [
        (2.0, [("ReplicaNoEdgeConnections", "0", "firing")]),
        (
            7.0,
            [
                ("ReplicaNoEdgeConnections", "0", "firing"),
                ("ReplicaNoEdgeConnections", "1", "firing"),
                ("ReplicaNoEdgeConnections", "2", "firing"),
            ],
        ),
        (14.5, [("ReplicaNoEdgeConnections", str(s), "firing") for s in range(4)]),
    ]
    updates = [p.incident.update for _, p in host.pages if p.incident is not None]
    assert updates == [0, 1, 2]
    assert len({formats.dedup_key(p) for _, p in host.pages}) == 1
    slack = formats.slack_payload(host.pages[1][1])["text"]
    assert slack.startswith(":red_circle: [update 1] FIRING ReplicaNoEdgeConnections")
    assert slack.count("\n• ") == 2
    pd = formats.pagerduty_payload(host.pages[2][1], "rk")
    assert pd["event_action"] == "trigger"
    assert len(pd["payload"]["custom_details"]["alerts"]) == 4


def test_resolves_follow_the_grouping_and_a_new_fault_opens_a_new_incident() -> None:
    host = Host(inhibit=False)
    host.run(0, 10, dark(0), dark(1))
    host.run(10.5, 40)  # both clear at 10.5, resolve at 20.5 in one evaluation
    host.run(40.5, 45, dark(0))
    statuses = [(t, p.status, told(p)) for t, p in host.pages]
    assert statuses[-2:] == [
        (
            20.5,
            "resolved",
            [
                ("ReplicaNoEdgeConnections", "0", "resolved"),
                ("ReplicaNoEdgeConnections", "1", "resolved"),
            ],
        ),
        (42.5, "firing", [("ReplicaNoEdgeConnections", "0", "firing")]),
    ]
    first, resolve, second = (p for _, p in host.pages)
    assert formats.pagerduty_payload(resolve, "rk") == {
        "routing_key": "rk",
        "event_action": "resolve",
        "dedup_key": formats.dedup_key(first),
    }
    assert formats.dedup_key(second) != formats.dedup_key(first)  # a new PagerDuty incident
    assert formats.group_key(second) == formats.group_key(first)  # the same Alertmanager group


def test_the_all_clear_never_waits_for_the_group_window() -> None:
    host = Host(hold=1.0, inhibit=False)
    host.run(0, 2, dark(0), dark(1))  # one page at 2.0
    host.run(2.5, 10)  # both clear at 2.5 and resolve at 3.5, well within the window
    assert [(t, p.status) for t, p in host.pages] == [(2.0, "firing"), (3.5, "resolved")]


def test_an_inhibited_alert_still_holding_when_the_tunnel_recovers_pages_then() -> None:
    host = Host()
    host.run(0, 5, TUNNEL_DOWN, dark(0), dark(1))
    host.run(5.5, 20, dark(1))  # slot 0 serves again; slot 1 stays dark
    names = [(t, told(p)) for t, p in host.pages]
    assert names[0] == (2.0, [("TunnelDown", "-", "firing")])
    # TunnelDown resolves at 15.5 (hold 10); slot 1, still dark, is told then, in the same page
    assert names[1] == (
        15.5,
        [("ReplicaNoEdgeConnections", "1", "firing"), ("TunnelDown", "-", "resolved")],
    )
    assert len(names) == 2


def test_an_inhibited_alert_that_clears_under_inhibition_never_pages_nor_resolves() -> None:
    host = Host()
    host.run(0, 5, TUNNEL_DOWN, looping(0))
    host.run(5.5, 8, TUNNEL_DOWN)  # the crash loop is over, the tunnel still down
    host.run(8.5, 40)
    assert [told(p) for _, p in host.pages] == [
        [("TunnelDown", "-", "firing")],
        [("TunnelDown", "-", "resolved")],
    ]


def test_fleet_alerts_are_neither_inhibited_nor_grouped() -> None:
    host = Host()
    host.run(0, 3, TUNNEL_DOWN, FLEET_LOW)
    pages = [p for _, p in host.pages]
    assert sorted(p.alert.alertname for p in pages) == ["FleetConnectorsLow", "TunnelDown"]
    fleet = next(p for p in pages if p.alert.alertname == "FleetConnectorsLow")
    assert fleet.incident is None
    assert formats.dedup_key(fleet) == fleet.alert.dedup_key  # equal on every host


def test_other_tunnels_are_other_incidents_and_not_inhibited() -> None:
    host = Host()
    host.run(0, 3, TUNNEL_DOWN, dark(0, "admin"))
    assert sorted(told(p)[0][0] for _, p in host.pages) == [
        "ReplicaNoEdgeConnections",
        "TunnelDown",
    ]
    assert len({formats.group_key(p) for _, p in host.pages}) == 2


def test_without_inhibition_or_grouping_every_alert_pages_alone() -> None:
    host = Host(inhibit=False, group_by_tunnel=False)
    host.run(0, 3, TUNNEL_DOWN, down(0), down(1))
    assert len(host.pages) == 3 and all(p.incident is None for _, p in host.pages)


def test_open_incidents_survive_a_restart_through_the_snapshot() -> None:
    host = Host()
    host.run(0, 5, TUNNEL_DOWN, dark(0))
    state = host.incidents.snapshot()
    # a new daemon: the engine restores its firing alerts, the incidents their groups
    again = Host()
    again.engine.restore(host.engine.snapshot(), 100.0)
    again.incidents.restore(state, 100.0)
    again.run(100, 120)
    (page,) = (p for _, p in again.pages)
    first = host.pages[0][1]
    assert page.status == "resolved" and told(page) == [("TunnelDown", "-", "resolved")]
    assert formats.dedup_key(page) == formats.dedup_key(first)
    assert Notification.from_dict(page.to_dict()) == page  # as stored in the outbox


def test_a_damaged_snapshot_is_skipped_and_alerts_resolve_alone() -> None:
    host = Host()
    host.run(0, 3, dark(0))
    again = Host()
    again.engine.restore(host.engine.snapshot(), 100.0)
    again.incidents.restore({"groups": [{"labels": 5}], "suppressed": ["x"]}, 100.0)
    again.run(100, 115)
    (page,) = (p for _, p in again.pages)
    assert page.incident is None and page.status == "resolved"
