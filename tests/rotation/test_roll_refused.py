"""Issue 4: tokens that must not reach the replicas.

* A well-formed token with a wrong secret: the new replica never becomes ready at the edge, the
  rotation fails once (and is not retried in a loop), the old replicas keep serving.
* A token for another tunnel: refused before any replica starts with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Daemon, Sim
from tests.rotation.conftest import (
    LOAD_RATE,
    TimedLoad,
    fingerprint,
    metric,
    report,
    spawns,
    tuned_config,
    write_atomically,
    wrong_secret_token,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.system
RunDaemon = Callable[..., Daemon]
READY_TIMEOUT = 3.0


def test_wrong_secret_fails_once_and_old_replicas_keep_serving(
    request: pytest.FixtureRequest, tmp_path: Path, sim: Sim, run_daemon: RunDaemon
) -> None:
    token_file = tmp_path / "portal.token"
    write_atomically(token_file, sim.token("portal") + "\n")
    cfg = tuned_config(
        tmp_path,
        sim,
        f'{{ source = "file", path = "{token_file}", poll_seconds = 0.5 }}',
        ready_timeout_seconds=READY_TIMEOUT,
    )
    d = run_daemon(cfg)
    before = d.wait_ready("portal", 2)
    bad = wrong_secret_token(sim, "portal")
    with TimedLoad(sim, "portal", rate_per_second=LOAD_RATE) as load:
        wait_until(lambda: load.results["ok"] >= 50, timeout=10, what="load flowing")
        spawned_before = spawns(d)
        write_atomically(token_file, bad + "\n")
        wait_until(
            lambda: metric(d, "tunnelkeeper_token_rotations_total", result="failed") == 1,
            timeout=READY_TIMEOUT + 15,
            what="rotation counted failed",
        )
        # Watch three more ready-timeout periods: the same token version is not tried again.
        deadline = time.monotonic() + 3 * READY_TIMEOUT
        while time.monotonic() < deadline:
            prim = d.primaries("portal")
            assert {r["pid"] for r in prim} == {r["pid"] for r in before}
            assert all(r["ready_connections"] > 0 for r in prim)
            time.sleep(0.25)
    report(request, load)
    assert load.failed == 0, load.failures[:5]
    assert spawns(d) - spawned_before == 1  # one successor tried, then never again
    assert metric(d, "tunnelkeeper_token_rotations_total", result="failed") == 1
    assert metric(d, "tunnelkeeper_token_rotations_total", result="success") == 0
    assert metric(d, "tunnelkeeper_replica_restarts_total", reason="rotation") == 1
    token = d.tunnel("portal")["token"]
    assert fingerprint(bad) in token["failed_fingerprints"]
    assert token["fingerprint"] == before[0]["token_fingerprint"]  # replicas kept the old one
    assert {r["token_fingerprint"] for r in d.tunnel("portal")["replicas"]} == {
        before[0]["token_fingerprint"]
    }


def test_token_for_another_tunnel_is_refused_before_any_replica_uses_it(
    tmp_path: Path, make_sim: Callable[..., Sim], run_daemon: RunDaemon
) -> None:
    sim = make_sim("portal", "admin")
    token_file = tmp_path / "portal.token"
    write_atomically(token_file, sim.token("portal") + "\n")
    cfg = tuned_config(
        tmp_path,
        sim,
        f'{{ source = "file", path = "{token_file}", poll_seconds = 0.5 }}',
        id=f'"{sim.info["tunnels"]["portal"]}"',
    )
    d = run_daemon(cfg)
    before = d.wait_ready("portal", 2)
    foreign = sim.token("admin")
    foreign_fp = fingerprint(foreign)
    write_atomically(token_file, foreign + "\n")
    t = wait_until(
        lambda: (t := d.tunnel("portal"))["token"]["error"] and t,
        timeout=10,
        what="refusal in status",
    )
    assert "refused" in t["token"]["error"]
    assert sim.info["tunnels"]["admin"] in t["token"]["error"]
    # Several source polls later: no replica ever got it, nothing was rolled.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        reps = d.tunnel("portal")["replicas"]
        assert foreign_fp not in {r["token_fingerprint"] for r in reps}
        assert {r["pid"] for r in reps} == {r["pid"] for r in before}
        time.sleep(0.2)
    spawned = [line for line in d.output().splitlines() if "replica_spawned" in line]
    assert len(spawned) == 2 and not [line for line in spawned if foreign_fp in line]
    assert metric(d, "tunnelkeeper_token_source_errors_total", reason="refused") >= 1
    assert metric(d, "tunnelkeeper_token_rotations_total") == 0
    assert not sim.live_connector_ids("admin")
    assert "refused" in d.output()
    # The source holds an unusable token: that is visible and pages (the replicas run on a
    # token the next secret refresh revokes) ...
    assert metric(d, "tunnelkeeper_tunnel_token_valid", tunnel="portal") == 0
    wait_until(
        lambda: "TokenSourceUnavailable/portal" in d.status()["alerts_firing"],
        timeout=15,
        what="TokenSourceUnavailable firing",
    )
    # ... until the source holds a good one again, and nothing is left "in progress".
    write_atomically(token_file, sim.token("portal") + "\n")
    wait_until(
        lambda: (
            metric(d, "tunnelkeeper_tunnel_token_valid", tunnel="portal") == 1
            and d.tunnel("portal")["token"]["error"] is None
            and d.tunnel("portal")["token"]["rotation_in_progress"] is False
        ),
        timeout=10,
        what="token valid again",
    )


def test_a_roll_called_off_by_the_source_reverting_ends_at_once(
    tmp_path: Path, sim: Sim, run_daemon: RunDaemon
) -> None:
    """The source briefly holds a new (here: never-ready) token, then reverts: the successor
    started for it drains at once, nothing counts as a failed rotation, and the status stops
    saying a rotation is in progress — long before ready_timeout would have ended it."""
    token_file = tmp_path / "portal.token"
    good = sim.token("portal")
    write_atomically(token_file, good + "\n")
    cfg = tuned_config(
        tmp_path,
        sim,
        f'{{ source = "file", path = "{token_file}", poll_seconds = 0.5 }}',
        ready_timeout_seconds=60,
    )
    d = run_daemon(cfg)
    before = d.wait_ready("portal", 2)
    write_atomically(token_file, wrong_secret_token(sim, "portal") + "\n")
    wait_until(
        lambda: any(r["role"] == "successor" for r in d.tunnel("portal")["replicas"]),
        timeout=10,
        what="a successor on the new token",
    )
    assert d.tunnel("portal")["token"]["rotation_in_progress"] is True
    write_atomically(token_file, good + "\n")
    wait_until(
        lambda: (
            (t := d.tunnel("portal"))["token"]["rotation_in_progress"] is False
            and not any(r["role"] == "successor" for r in t["replicas"])
        ),
        timeout=15,
        what="the roll called off",
    )
    assert {r["pid"] for r in d.primaries("portal")} == {r["pid"] for r in before}
    assert metric(d, "tunnelkeeper_token_rotations_total", result="failed") == 0
