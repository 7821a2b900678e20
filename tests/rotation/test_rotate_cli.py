"""Issue 4: `tunnelkeeper rotate [TUNNEL] [--force]` against a running daemon."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Daemon, Sim, run_cli
from tests.rotation.conftest import (
    LOAD_RATE,
    TimedLoad,
    fingerprint,
    metric,
    refresh_via_api,
    report,
    rolled_to,
    tuned_config,
    write_atomically,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.system
RunDaemon = Callable[..., Daemon]


def rotate(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("rotate", cfg, *args, timeout=80)


def start(tmp_path: Path, sim: Sim, run_daemon: RunDaemon) -> tuple[Path, Path, Daemon]:
    token_file = tmp_path / "portal.token"
    write_atomically(token_file, sim.token("portal") + "\n")
    # The source is polled rarely: only `rotate` makes the daemon look now.
    cfg = tuned_config(
        tmp_path, sim, f'{{ source = "file", path = "{token_file}", poll_seconds = 300 }}'
    )
    return cfg, token_file, run_daemon(cfg)


def test_rotate_after_a_change_waits_and_reports_done(
    tmp_path: Path, sim: Sim, run_daemon: RunDaemon
) -> None:
    cfg, token_file, d = start(tmp_path, sim, run_daemon)
    d.wait_ready("portal", 2)
    new = refresh_via_api(sim, "portal")
    write_atomically(token_file, new + "\n")
    done = rotate(cfg, "portal")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "portal: done" in done.stdout
    assert fingerprint(new) in done.stdout
    assert new not in done.stdout + done.stderr
    # rotate returned only once every primary ran the new token and was ready
    prim = d.primaries("portal")
    assert len(prim) == 2
    assert all(r["token_fingerprint"] == fingerprint(new) for r in prim)
    assert all(r["ready_connections"] > 0 for r in prim)
    wait_until(lambda: rolled_to(d, sim, fingerprint(new)), timeout=15, what="old ones drained")
    assert metric(d, "tunnelkeeper_token_rotations_total", result="success") == 1


def test_rotate_force_rolls_every_replica_without_failed_requests(
    request: pytest.FixtureRequest, tmp_path: Path, sim: Sim, run_daemon: RunDaemon
) -> None:
    cfg, _, d = start(tmp_path, sim, run_daemon)
    before = d.wait_ready("portal", 2)
    with TimedLoad(sim, "portal", rate_per_second=LOAD_RATE) as load:
        wait_until(lambda: load.results["ok"] >= 50, timeout=10, what="load flowing")
        unchanged = rotate(cfg)
        assert unchanged.returncode == 0, (unchanged.stdout, unchanged.stderr)
        forced = rotate(cfg, "--force")
        sent = load.total
        wait_until(lambda: load.total >= sent + 100, timeout=10, what="load after the roll")
    report(request, load)
    assert forced.returncode == 0, (forced.stdout, forced.stderr)
    assert "portal: done" in forced.stdout
    after = d.wait_ready("portal", 2)
    assert not {r["pid"] for r in before} & {r["pid"] for r in after}
    assert {r["token_fingerprint"] for r in after} == {before[0]["token_fingerprint"]}
    assert load.failed == 0, load.failures[:5]
    assert metric(d, "tunnelkeeper_replica_restarts_total", reason="rotation") == 2


def test_rotate_unknown_tunnel_is_a_clear_error(
    tmp_path: Path, sim: Sim, run_daemon: RunDaemon
) -> None:
    cfg, _, d = start(tmp_path, sim, run_daemon)
    before = d.wait_ready("portal", 2)
    result = rotate(cfg, "nope")
    assert result.returncode == 1
    assert "no tunnel named 'nope'" in result.stderr
    assert "Traceback" not in result.stderr
    assert {r["pid"] for r in d.primaries("portal")} == {r["pid"] for r in before}
