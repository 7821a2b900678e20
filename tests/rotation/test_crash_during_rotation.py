"""Issue 4: a daemon killed with SIGKILL in the middle of a rotation, then started again, ends
with every replica on the newest valid token: no old-token replica is left over, and no process
of the previous run is left unsupervised (the new daemon adopts or stops each of them)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.harness import Daemon, Sim
from tests.rotation.conftest import (
    fingerprint,
    refresh_via_api,
    rolled_to,
    tuned_config,
    write_atomically,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.system
RunDaemon = Callable[..., Daemon]


def replicas_of(tmp_path: Path) -> set[int]:
    """Every cloudflared-sim process started for this test, whoever its parent is."""
    return {
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(str(tmp_path) in part for part in (p.info["cmdline"] or []))
        and "cloudflared-sim" in " ".join(p.info["cmdline"] or [])
    }


def test_kill_9_mid_rotation_then_restart_runs_only_the_newest_token(
    tmp_path: Path, sim: Sim, run_daemon: RunDaemon
) -> None:
    token_file = tmp_path / "portal.token"
    write_atomically(token_file, sim.token("portal") + "\n")
    cfg = tuned_config(
        tmp_path,
        sim,
        f'{{ source = "file", path = "{token_file}", poll_seconds = 0.2 }}',
        grace_period_seconds=3,
    )
    d = run_daemon(cfg)
    old_fp = d.wait_ready("portal", 2)[0]["token_fingerprint"]
    new = refresh_via_api(sim, "portal")
    new_fp = fingerprint(new)
    write_atomically(token_file, new + "\n")

    def mid_rotation() -> list[dict[str, Any]] | None:
        reps = d.tunnel("portal")["replicas"]
        fps = {r["token_fingerprint"] for r in reps}
        return reps if old_fp in fps and new_fp in fps else None

    seen = wait_until(mid_rotation, timeout=15, interval=0.02, what="a rotation in progress")
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(timeout=10)
    old_token_pids = {r["pid"] for r in seen if r["token_fingerprint"] == old_fp}
    assert old_token_pids & replicas_of(tmp_path)  # the killed run left old-token replicas

    d2 = run_daemon(cfg)
    after = wait_until(lambda: rolled_to(d2, sim, new_fp), timeout=30, what="newest token")
    # no old-token replica survived, and every cloudflared left is one the daemon supervises
    wait_until(
        lambda: replicas_of(tmp_path) == {r["pid"] for r in d2.tunnel("portal")["replicas"]},
        timeout=15,
        what="no unsupervised replica",
    )
    assert not old_token_pids & replicas_of(tmp_path)
    assert replicas_of(tmp_path) == {r["pid"] for r in after}
    # the sim agrees: only the replicas now running are live connectors
    assert sim.live_connector_ids("portal") == {r["connector_id"] for r in after}
