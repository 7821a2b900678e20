"""Fault: the wall clock jumps (an NTP step, a VM resumed, an operator's `date -s`).

The system clock cannot be changed here, so the daemon runs under libfaketime (Debian package
`faketime`) with its offset read from a file the test rewrites mid-run, and with
DONT_FAKE_MONOTONIC=1: only CLOCK_REALTIME jumps, as in a real step. The daemon's policy runs on
the monotonic clock, so a jump of a day restarts nothing, fires nothing and resolves nothing;
wall time only stamps what people read, and pages stay coherent (a resolve never ends before it
started).
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.alerts.receiver import Receiver
from tests.faults.conftest import alerts_named, alerts_toml, fault_config, metric, webhook_sink
from tests.harness import Daemon, Load, Sim
from tests.servers import Alertmanager
from tests.waiting import wait_until

pytestmark = pytest.mark.system
LIBFAKETIME = next(
    iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))),
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"),
)
DAY = timedelta(days=1)


class FakeClock:
    """The daemon's wall-clock offset, as a libfaketime timestamp file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set("+0")

    def set(self, offset: str) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(offset + "\n")
        tmp.replace(self.path)

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            # re-read the file every second: the jump takes effect within one. (Not
            # FAKETIME_NO_CACHE=1, re-reading it on every call: with libfaketime 0.9.10 that
            # stalled the faked daemon for seconds now and then, so its probes went stale and a
            # start took up to 11 s, in about 1 run in 8.)
            "FAKETIME_CACHE_DURATION": "1",
            "DONT_FAKE_MONOTONIC": "1",
        }


@pytest.fixture
def fake_clock(tmp_path: Path) -> Iterator[FakeClock]:
    if not LIBFAKETIME.exists():
        pytest.fail("libfaketime is not installed: apt-get install -y faketime (tests/run.sh)")
    yield FakeClock(tmp_path / "faketime")


def daemon_wall_clock(d: Daemon) -> datetime:
    """The daemon's idea of now, from the Date header of its HTTP answers."""
    return email.utils.parsedate_to_datetime(
        httpx.get(d.url + "/healthz", timeout=5).headers["date"]
    )


def near(moment: str, expected: datetime, slack: timedelta = timedelta(minutes=2)) -> bool:
    return abs(datetime.fromisoformat(moment.replace("Z", "+00:00")) - expected) <= slack


def uptimes(d: Daemon) -> dict[int, float]:
    return {r["pid"]: r["uptime_seconds"] for r in d.primaries("portal")}


def test_wall_clock_jump_of_a_day_restarts_nothing_and_pages_stay_coherent(
    tmp_path: Path,
    sim: Sim,
    fake_clock: FakeClock,
    receivers: Callable[..., Receiver],
    whsec: tuple[str, Path],
    run_daemon: Callable[..., Daemon],
) -> None:
    hook = receivers()
    cfg = fault_config(
        tmp_path,
        sim,
        tunnels={"portal": {"unhealthy_after_seconds": 60}},
        extra=alerts_toml(webhook_sink(f"{hook.url}/hook", whsec[1], name="oncall")),
    )
    d = run_daemon(cfg, env=fake_clock.env())
    before = d.wait_ready("portal", 2)
    with Load(sim, "portal", rate_per_second=20) as load:
        wait_until(lambda: load.results["ok"] >= 10, timeout=10, what="load flowing")
        fake_clock.set("+1d")
        wait_until(
            lambda: daemon_wall_clock(d) - datetime.now(UTC) > DAY - timedelta(minutes=1),
            timeout=10,
            what="the daemon's wall clock jumped a day ahead",
        )
        # Several seconds of real (monotonic) time in the new wall time ...
        start = uptimes(d)
        wait_until(
            lambda: all(u >= start[pid] + 4 for pid, u in uptimes(d).items()),
            timeout=20,
            what="4 s of supervision after the jump",
        )
        # ... and nothing noticed: no restart, no page, monotonic ages.
        assert {r["pid"] for r in d.wait_ready("portal", 2)} == {r["pid"] for r in before}
        assert metric(d, "tunnelkeeper_replica_restarts_total") == 0
        assert d.status()["alerts_firing"] == []
        assert pages_of(hook) == [], [  # which alert, if one did go out (seen once in CI)
            f"{a['labels']['alertname']}/{a['labels'].get('slot', '-')}:{a['status']}"
            for r in pages_of(hook)
            for a in r.json().get("alerts", [])
        ]
        assert all(u < 600 for u in uptimes(d).values())
        assert d.status()["uptime_seconds"] < 600
        # A real fault after the jump pages with the daemon's (new) wall time, then resolves.
        assert load.failed == 0, load.failures[:5]
        failed_before_the_fault = load.failed
        sim.fault("partition", connector_id=before[1]["connector_id"])
        fired = wait_until(
            lambda: alerts_named(hook, "ReplicaNoEdgeConnections", "firing"), timeout=20
        )
        assert near(fired[0]["startsAt"], datetime.now(UTC) + DAY)
        sim.fault("heal")
        resolved = wait_until(
            lambda: alerts_named(hook, "ReplicaNoEdgeConnections", "resolved"), timeout=30
        )
        assert resolved[0]["startsAt"] == fired[0]["startsAt"]
        assert resolved[0]["endsAt"] >= resolved[0]["startsAt"]
        assert near(resolved[0]["endsAt"], datetime.now(UTC) + DAY)
    # The partition may cut the one request in flight on that connector (the load sends one at
    # a time); nothing else fails.
    assert load.failed - failed_before_the_fault <= 1, load.failures[:5]
    assert {r["pid"] for r in d.primaries("portal")} == {r["pid"] for r in before}
    assert d.proc.poll() is None


def pages_of(receiver: Receiver) -> list[Any]:
    return receiver.received("/hook")


def am_sink(am: Alertmanager) -> str:
    return f'[[alerts.sink]]\nkind = "alertmanager"\nname = "am"\nurl = "{am.url}"\n'


def am_alerts(am: Alertmanager, name: str, status: str) -> list[dict[str, Any]]:
    """What Alertmanager itself passed on to its webhook receiver."""
    return [
        a
        for r in am.webhook.received()
        for a in r.json()["alerts"]
        if a["labels"].get("alertname") == name and a["status"] == status
    ]


def test_backward_clock_step_between_fire_and_resolve_still_resolves(
    tmp_path: Path,
    sim: Sim,
    fake_clock: FakeClock,
    receivers: Callable[..., Receiver],
    whsec: tuple[str, Path],
    alertmanager: Alertmanager,
    run_daemon: Callable[..., Daemon],
) -> None:
    hook = receivers()
    cfg = fault_config(
        tmp_path,
        sim,
        tunnels={"portal": {"replicas": 1, "unhealthy_after_seconds": 60}},
        extra=alerts_toml(
            webhook_sink(f"{hook.url}/hook", whsec[1], name="oncall"), am_sink(alertmanager)
        ),
    )
    d = run_daemon(cfg, env=fake_clock.env())
    replica = d.wait_ready("portal", 1)[0]
    sim.fault("partition", connector_id=replica["connector_id"])
    wait_until(lambda: am_alerts(alertmanager, "ReplicaNoEdgeConnections", "firing"), timeout=20)
    fake_clock.set("-1h")  # NTP steps the clock back an hour
    wait_until(
        lambda: datetime.now(UTC) - daemon_wall_clock(d) > timedelta(minutes=59),
        timeout=10,
        what="the daemon's wall clock stepped back",
    )
    sim.fault("heal")
    # on-call's webhook got the tunnel's incident (TunnelDown inhibits the replica's alert);
    # Alertmanager got both
    resolved = wait_until(lambda: alerts_named(hook, "TunnelDown", "resolved"), timeout=30)
    assert resolved[0]["endsAt"] >= resolved[0]["startsAt"]
    wait_until(
        lambda: am_alerts(alertmanager, "ReplicaNoEdgeConnections", "resolved"),
        timeout=20,
        what="Alertmanager resolves it",
    )


def test_page_reaches_alertmanager_after_the_host_clock_jumped_ahead(
    tmp_path: Path,
    sim: Sim,
    fake_clock: FakeClock,
    alertmanager: Alertmanager,
    run_daemon: Callable[..., Daemon],
) -> None:
    cfg = fault_config(
        tmp_path,
        sim,
        tunnels={"portal": {"replicas": 1, "unhealthy_after_seconds": 60}},
        extra=alerts_toml(am_sink(alertmanager)),
    )
    fake_clock.set("+1h")  # this host's clock stepped an hour ahead; Alertmanager's did not
    d = run_daemon(cfg, env=fake_clock.env())
    replica = d.wait_ready("portal", 1)[0]
    sim.fault("partition", connector_id=replica["connector_id"])
    wait_until(
        lambda: metric(d, "tunnelkeeper_alert_deliveries_total", sink="am") >= 1,
        timeout=20,
        what="a delivery attempt",
    )
    assert metric(d, "tunnelkeeper_alert_deliveries_total", sink="am", result="failed") == 0
    wait_until(
        lambda: am_alerts(alertmanager, "ReplicaNoEdgeConnections", "firing"),
        timeout=20,
        what="the page through Alertmanager",
    )
