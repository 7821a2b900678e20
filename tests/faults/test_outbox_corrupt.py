"""Fault: the alert outbox file is garbage when the daemon starts (a bad disk, a stray write).

The daemon starts anyway, moves the file aside (kept for a post-mortem, never deleted), opens a
fresh durable outbox in its place, and pages on-call as usual.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.alerts.receiver import Receiver
from tests.faults.conftest import alerts_named, alerts_toml, events, fault_config, webhook_sink
from tests.harness import Daemon, Sim
from tests.waiting import wait_until

pytestmark = pytest.mark.system


def test_corrupt_outbox_is_moved_aside_and_pages_still_work(
    tmp_path: Path,
    sim: Sim,
    receivers: Callable[..., Receiver],
    whsec: tuple[str, Path],
    run_daemon: Callable[..., Daemon],
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    outbox = state / "alerts-outbox.sqlite3"
    garbage = b"SQLite format 3\0" + os.urandom(8192)  # the right magic, then noise
    outbox.write_bytes(garbage)
    hook = receivers()
    cfg = fault_config(
        tmp_path,
        sim,
        tunnels={"portal": {"unhealthy_after_seconds": 60}},
        extra=alerts_toml(webhook_sink(f"{hook.url}/hook", whsec[1], name="oncall")),
    )
    d = run_daemon(cfg)
    victim = d.wait_ready("portal", 2)[0]
    assert events(d, "alert_outbox_quarantined") == 1
    moved = list(state.glob("alerts-outbox.sqlite3.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == garbage
    assert d.status()["alerts"]["outbox_durable"] is True
    sim.fault("partition", connector_id=victim["connector_id"])
    firing = wait_until(
        lambda: alerts_named(hook, "ReplicaNoEdgeConnections", "firing"),
        timeout=20,
        what="page through the fresh outbox",
    )
    assert firing[0]["labels"]["slot"] == str(victim["slot"])
    sim.fault("heal")
    wait_until(
        lambda: alerts_named(hook, "ReplicaNoEdgeConnections", "resolved"),
        timeout=30,
        what="resolve",
    )
    assert d.proc.poll() is None
    assert "Traceback" not in d.output()
