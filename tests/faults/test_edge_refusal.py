"""Fault: the edge refuses new registrations for the tunnel (live connections stay up).

A replica killed during it is replaced, but the replacement cannot register. The survivor keeps
serving every request; the replacement is kept and retried at a bounded pace, not churned; on-call
is paged for the dark slot; after the fault clears the tunnel is whole again and the page resolves.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.alerts.receiver import Receiver
from tests.faults.conftest import alerts_named, alerts_toml, fault_config, metric, webhook_sink
from tests.harness import Daemon, Load, Sim
from tests.waiting import wait_until

pytestmark = pytest.mark.system
READY_TIMEOUT = 4.0


def test_edge_refusing_registrations_keeps_the_survivor_serving_and_recovers(
    tmp_path: Path,
    sim: Sim,
    receivers: Callable[..., Receiver],
    whsec: tuple[str, Path],
    run_daemon: Callable[..., Daemon],
) -> None:
    hook = receivers()
    cfg = fault_config(
        tmp_path,
        sim,
        tunnels={"portal": {"unhealthy_after_seconds": 3}},
        ready_timeout_seconds=READY_TIMEOUT,
        extra=alerts_toml(webhook_sink(f"{hook.url}/hook", whsec[1], name="oncall")),
    )
    d = run_daemon(cfg)
    victim, survivor = d.wait_ready("portal", 2)
    with Load(sim, "portal", rate_per_second=20) as load:
        wait_until(lambda: load.results["ok"] >= 10, timeout=10, what="load flowing")
        sim.fault("refuse_registrations", tunnel="portal")
        os.kill(victim["pid"], signal.SIGKILL)
        # The slot gets a new primary at once; it stays alive, unable to register.
        replacement = wait_until(
            lambda: next(
                (
                    r
                    for r in d.primaries("portal")
                    if r["slot"] == victim["slot"] and r["pid"] != victim["pid"]
                ),
                None,
            ),
            timeout=10,
            what="replacement spawned",
        )
        assert replacement is not None
        # Watch the slot for a while: trial successors come and go, one at a time and at a
        # bounded pace; the replacement primary itself is kept, the survivor untouched.
        watch_started = time.monotonic()
        spawned_before = metric(d, "tunnelkeeper_replica_restarts_total", tunnel="portal")
        most_at_once = 0
        while time.monotonic() - watch_started < 2.5 * READY_TIMEOUT:
            reps = d.tunnel("portal")["replicas"]
            most_at_once = max(most_at_once, len([r for r in reps if r["role"] != "draining"]))
            prim = {r["slot"]: r["pid"] for r in reps if r["role"] == "primary"}
            assert prim == {victim["slot"]: replacement["pid"], survivor["slot"]: survivor["pid"]}
            time.sleep(0.25)
        trials = metric(d, "tunnelkeeper_replica_restarts_total", tunnel="portal") - spawned_before
        assert most_at_once <= 3
        # a trial lasts ready_timeout, then the slot backs off at least 5 s
        assert trials <= 2, trials
        assert d.tunnel("portal")["ready_replicas"] == 1
        page = wait_until(
            lambda: alerts_named(hook, "ReplicaNoEdgeConnections", "firing"),
            timeout=20,
            what="page for the slot that cannot register",
        )
        assert page[0]["labels"]["slot"] == str(victim["slot"])
        sim.fault("heal")
        d.wait_ready("portal", 2, timeout=40)
        wait_until(
            lambda: alerts_named(hook, "ReplicaNoEdgeConnections", "resolved"),
            timeout=30,
            what="resolved page",
        )
        served = load.results["ok"]
        wait_until(lambda: load.results["ok"] >= served + 10, timeout=10, what="load after heal")
    # kill -9 may lose the one request the victim was serving at that instant; every other
    # request went through the survivor, throughout the refusal.
    assert load.failed <= 1, load.failures
    assert all("failed mid-request" in f for f in load.failures), load.failures
    assert d.proc.poll() is None
    serving = {r["connector_id"] for r in d.primaries("portal")}
    wait_until(lambda: sim.live_connector_ids("portal") == serving, timeout=15, what="edge view")
