"""Fault: the cloudflared binary (``cloudflared.path``, a copy here) is deleted while replicas run.

The running replicas keep serving (their executable stays mapped). A replica killed meanwhile
cannot be replaced: every spawn fails, the slot backs off and becomes crash-looping, on-call is
paged with ReplicaDown, and the daemon itself carries on. Putting the binary back recovers the
slot and resolves the pages.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.alerts.receiver import Receiver
from tests.faults.conftest import (
    alerts_named,
    alerts_toml,
    events,
    fault_config,
    metric,
    webhook_sink,
)
from tests.harness import CLOUDFLARED_SIM, Daemon, Load, Sim
from tests.waiting import wait_until

pytestmark = pytest.mark.system


def binary_copy(tmp_path: Path) -> Path:
    target = tmp_path / "bin" / "cloudflared"
    target.parent.mkdir()
    shutil.copy2(CLOUDFLARED_SIM, target)
    return target


def test_deleted_binary_keeps_replicas_serving_and_pages_when_a_replacement_cannot_spawn(
    tmp_path: Path,
    sim: Sim,
    receivers: Callable[..., Receiver],
    whsec: tuple[str, Path],
    run_daemon: Callable[..., Daemon],
) -> None:
    binary = binary_copy(tmp_path)
    hook = receivers()
    cfg = fault_config(
        tmp_path,
        sim,
        cloudflared=str(binary),
        extra=alerts_toml(webhook_sink(f"{hook.url}/hook", whsec[1], name="oncall")),
    )
    d = run_daemon(cfg)
    victim, survivor = d.wait_ready("portal", 2)
    with Load(sim, "portal", rate_per_second=20) as load:
        wait_until(lambda: load.results["ok"] >= 10, timeout=10, what="load flowing")
        binary.unlink()
        os.kill(victim["pid"], signal.SIGKILL)
        slot = str(victim["slot"])
        wait_until(
            lambda: d.tunnel("portal")["slots"][victim["slot"]]["crash_looping"],
            timeout=30,
            what="slot crash-looping in status",
        )
        assert events(d, "replica_spawn_failed") >= 1
        assert metric(d, "tunnelkeeper_replica_crash_looping", tunnel="portal", slot=slot) == 1
        assert metric(d, "tunnelkeeper_replica_up", tunnel="portal", slot=slot) == 0
        wait_until(
            lambda: alerts_named(hook, "ReplicaDown", "firing"), timeout=20, what="ReplicaDown"
        )
        wait_until(
            lambda: alerts_named(hook, "ReplicaCrashLooping", "firing"),
            timeout=20,
            what="ReplicaCrashLooping",
        )
        assert [r["pid"] for r in d.primaries("portal")] == [survivor["pid"]]
        assert d.proc.poll() is None
        # Restore the binary: the slot's next attempt (after its backoff) succeeds.
        shutil.copy2(CLOUDFLARED_SIM, binary)
        d.wait_ready("portal", 2, timeout=60)
        wait_until(
            lambda: alerts_named(hook, "ReplicaDown", "resolved"),
            timeout=30,
            what="ReplicaDown resolved",
        )
        served = load.results["ok"]
        wait_until(lambda: load.results["ok"] >= served + 10, timeout=10, what="more load")
    assert load.failed <= 1, load.failures  # at most the request the victim was serving
    assert all("failed mid-request" in f for f in load.failures), load.failures
    assert survivor["pid"] in {r["pid"] for r in d.primaries("portal")}
    assert "Traceback" not in d.output()


def test_crash_loop_page_resolves_once_the_binary_is_back(
    tmp_path: Path,
    sim: Sim,
    receivers: Callable[..., Receiver],
    whsec: tuple[str, Path],
    run_daemon: Callable[..., Daemon],
) -> None:
    binary = binary_copy(tmp_path)
    hook = receivers()
    window = 4
    cfg = fault_config(
        tmp_path,
        sim,
        tunnels={"portal": {"replicas": 1}},
        cloudflared=str(binary),
        daemon_extra=f"crash_loop_restarts = 3\ncrash_loop_window_seconds = {window}",
        # a tunnel of one replica: its TunnelDown would inhibit the crash-loop page (see
        # test_one_incident.py); this test is about that page, so inhibition is off
        extra=alerts_toml(
            webhook_sink(f"{hook.url}/hook", whsec[1], name="oncall"), for_seconds=1
        ).replace("[alerts]\n", "[alerts]\ninhibit = false\n"),
    )
    d = run_daemon(cfg)
    victim = d.wait_ready("portal", 1)[0]
    binary.unlink()
    os.kill(victim["pid"], signal.SIGKILL)
    wait_until(
        lambda: alerts_named(hook, "ReplicaCrashLooping", "firing"),
        timeout=20,
        what="ReplicaCrashLooping",
    )
    shutil.copy2(CLOUDFLARED_SIM, binary)
    d.wait_ready("portal", 1, timeout=40)
    # Serving again: the crash loop is over at the latest when its exits leave the window.
    wait_until(
        lambda: not d.tunnel("portal")["slots"][0]["crash_looping"],
        timeout=window + 4,
        what="crash-looping state cleared",
    )
    wait_until(
        lambda: alerts_named(hook, "ReplicaCrashLooping", "resolved"),
        timeout=10,
        what="ReplicaCrashLooping resolved",
    )
