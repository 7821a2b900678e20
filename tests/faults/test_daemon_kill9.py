"""Fault: the daemon is killed with -9 in the middle of work, and started again.

* during a cloudflared upgrade, after the canary was promoted and while the next replica's
  successor is starting: the new daemon adopts every replica and finishes the upgrade (every
  replica on the new version, ``cloudflared.path`` switched, nothing left running unsupervised),
  with no failed request;
* during alert delivery, while the receiver is holding the request: the new daemon delivers the
  page again under the same webhook-id, and its resolve after it.

(kill -9 during a token rotation: tests/rotation/test_crash_during_rotation.py.)
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.alerts.receiver import Receiver, Reply
from tests.faults.conftest import alerts_named, alerts_toml, fault_config, webhook_sink
from tests.harness import CLOUDFLARED_SIM, Daemon, Load, Sim
from tests.host.conftest import ReleaseServer, artefact, release_server, sha256  # noqa: F401
from tests.waiting import wait_until

pytestmark = pytest.mark.system
OLD, NEW = "2026.8.2", "2026.9.1"


def slow_artefact(version: str, start_delay_seconds: float) -> bytes:
    """A release whose start takes a while, so that the kill lands while a successor starts."""
    return (
        f"#!/bin/sh\nsleep {start_delay_seconds}\n"
        f'exec env CLOUDFLARED_SIM_VERSION={version} {CLOUDFLARED_SIM} "$@"\n'
    ).encode()


def managed_config(
    tmp_path: Path, sim: Sim, server: ReleaseServer, version: str, body: bytes, **kw: Any
) -> Path:
    server.publish(version, body)
    return fault_config(
        tmp_path,
        sim,
        cloudflared=str(tmp_path / "bin" / "cloudflared"),
        ready_timeout_seconds=12,
        extra=(
            f'[cloudflared.install]\nversion = "{version}"\nurl = "{server.template()}"\n'
            f'sha256 = "{sha256(body)}"\n'
        ),
        **kw,
    )


def replica_processes(tmp_path: Path) -> set[int]:
    """Every process running a replica of this test (cloudflared under tmp_path)."""
    return {
        p.pid
        for p in psutil.process_iter(["cmdline", "status"])
        if p.info["status"] != psutil.STATUS_ZOMBIE
        and any(str(tmp_path) in part for part in (p.info["cmdline"] or []))
        and "cloudflared" in " ".join(p.info["cmdline"] or [])
    }


def test_kill_9_between_canary_and_the_rest_of_an_upgrade_then_restart_completes_it(
    tmp_path: Path,
    sim: Sim,
    release_server: ReleaseServer,  # noqa: F811 - the fixture imported above
    run_daemon: Callable[..., Daemon],
) -> None:
    cfg = managed_config(tmp_path, sim, release_server, OLD, artefact(OLD))
    d = run_daemon(cfg)
    old = {r["pid"] for r in d.wait_ready("portal", 2)}
    link = tmp_path / "bin" / "cloudflared"
    wait_until(lambda: link.resolve().parent.name == OLD, timeout=10, what="installed")
    port = int(d.url.rsplit(":", 1)[1])
    with Load(sim, "portal", rate_per_second=20) as load:
        wait_until(lambda: load.results["ok"] >= 10, timeout=10, what="load flowing")
        managed_config(tmp_path, sim, release_server, NEW, slow_artefact(NEW, 2), listen_port=port)
        d.proc.send_signal(signal.SIGHUP)

        def canary_promoted_rest_pending() -> bool:
            reps = d.tunnel("portal")["replicas"]
            upgraded = [r for r in reps if r["role"] == "primary" and r["pid"] not in old]
            successors = [r for r in reps if r["role"] == "successor"]
            return len(upgraded) == 1 and len(successors) == 1

        wait_until(canary_promoted_rest_pending, timeout=40, what="canary promoted, next starting")
        d.proc.send_signal(signal.SIGKILL)
        assert d.proc.wait(timeout=10) == -signal.SIGKILL
        d2 = run_daemon(cfg)
        wait_until(
            lambda: (
                {r["cloudflared_version"] for r in d2.wait_ready("portal", 2)} == {NEW}
                and not [r for r in d2.tunnel("portal")["replicas"] if r["role"] != "primary"]
            ),
            timeout=60,
            what="every replica on the new version",
        )
        wait_until(
            lambda: link.resolve().parent.name == NEW, timeout=20, what="cloudflared.path switched"
        )
        primaries = {r["pid"] for r in d2.primaries("portal")}
        wait_until(
            lambda: replica_processes(tmp_path) == primaries,
            timeout=30,
            what="no replica left running unsupervised",
        )
        served = load.results["ok"]
        wait_until(lambda: load.results["ok"] >= served + 10, timeout=10, what="load after")
    assert load.failed == 0, load.failures[:5]
    assert not old & primaries
    assert "replica_adopted" in d2.output()
    assert "upgrade_completed" in d2.output()
    assert sim.live_connector_ids("portal") == {r["connector_id"] for r in d2.primaries("portal")}


def test_kill_9_during_alert_delivery_then_restart_delivers_with_the_same_webhook_id(
    tmp_path: Path,
    sim: Sim,
    receivers: Callable[..., Receiver],
    whsec: tuple[str, Path],
    run_daemon: Callable[..., Daemon],
) -> None:
    hook = receivers()
    hook.default = Reply(delay_seconds=30)  # holds every request until it recovers
    cfg = fault_config(
        tmp_path,
        sim,
        tunnels={"portal": {"unhealthy_after_seconds": 60}},
        extra=alerts_toml(webhook_sink(f"{hook.url}/hook", whsec[1], name="oncall")),
    )
    d = run_daemon(cfg)
    reps = d.wait_ready("portal", 2)
    sim.fault("partition", connector_id=reps[1]["connector_id"])
    wait_until(lambda: hook.received("/hook"), timeout=20, what="delivery in flight")
    in_flight = hook.received("/hook")[0].headers["webhook-id"]
    assert hook.completed == 0
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(timeout=10)
    hook.default = Reply()
    sim.fault("heal")
    d2 = run_daemon(cfg)
    assert {r["pid"] for r in d2.wait_ready("portal", 2, timeout=30)} == {r["pid"] for r in reps}
    wait_until(
        lambda: alerts_named(hook, "ReplicaNoEdgeConnections", "resolved"),
        timeout=40,
        what="fire and resolve delivered by the new daemon",
    )
    attempts = [r for r in hook.received("/hook") if r.headers["webhook-id"] == in_flight]
    assert len(attempts) >= 2  # the held attempt and the redelivery: same id
    statuses = [a["status"] for a in alerts_named(hook, "ReplicaNoEdgeConnections")]
    assert statuses == ["firing", "resolved"]
