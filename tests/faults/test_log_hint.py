"""Fault: a partition (the replica stays alive, its edge connections are cut).

cloudflared logs the loss at once (``Connection terminated``, ``Serve tunnel error``); that line
asks for a ``/ready`` probe now, so the partition is known within tens of milliseconds, not at the
next probe. The probe interval here is 30 s: only the log hint can make the deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.conftest import fault_config
from tests.harness import Daemon, Sim
from tests.waiting import wait_until

pytestmark = pytest.mark.system


def test_a_logged_connection_loss_gets_the_replica_probed_at_once(
    tmp_path: Path, sim: Sim, run_daemon: Callable[..., Daemon]
) -> None:
    cfg = fault_config(tmp_path, sim, tunnels={"portal": {"unhealthy_after_seconds": 60}})
    cfg.write_text(
        cfg.read_text().replace("probe_interval_seconds = 0.5", "probe_interval_seconds = 30")
    )
    d = run_daemon(cfg)
    victim = d.wait_ready("portal", 2)[0]
    sim.fault("partition", connector_id=victim["connector_id"])

    def dark() -> bool:
        replica = next(r for r in d.tunnel("portal")["replicas"] if r["pid"] == victim["pid"])
        return replica["ready_connections"] == 0

    wait_until(dark, timeout=10, interval=0.05, what="the partitioned replica known dark")
    other = next(r for r in d.tunnel("portal")["replicas"] if r["pid"] != victim["pid"])
    assert other["ready_connections"] > 0  # the healthy one is untouched


def test_a_logged_new_connection_gets_a_dark_replica_probed_at_once(
    tmp_path: Path, sim: Sim, run_daemon: Callable[..., Daemon]
) -> None:
    """The other way round: when the partition heals, cloudflared logs ``Registered tunnel
    connection`` as it reconnects, and that line gets the dark replica probed now, so it counts
    as serving again (and its successor is not started) without waiting 30 s for its probe."""
    cfg = fault_config(tmp_path, sim, tunnels={"portal": {"unhealthy_after_seconds": 60}})
    cfg.write_text(
        cfg.read_text().replace("probe_interval_seconds = 0.5", "probe_interval_seconds = 30")
    )
    d = run_daemon(cfg)
    victim = d.wait_ready("portal", 2)[0]

    def connections() -> int:
        replica = next(r for r in d.tunnel("portal")["replicas"] if r["pid"] == victim["pid"])
        return int(replica["ready_connections"])

    sim.fault("partition", connector_id=victim["connector_id"])
    wait_until(lambda: connections() == 0, timeout=10, interval=0.05, what="known dark")
    sim.fault("heal")
    wait_until(lambda: connections() > 0, timeout=10, interval=0.05, what="known connected again")
    assert any(
        '"child_message": "Registered tunnel connection"' in line
        for line in d.output().splitlines()[-200:]
    )
