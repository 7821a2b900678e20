"""Issue 5 system tests: `tunnelkeeper run` pages through real receivers and a real Alertmanager."""

from __future__ import annotations

import base64
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.alerts.receiver import Receiver, Recorded
from tests.harness import Daemon, Sim, daemon_config, start_daemon
from tests.servers import Alertmanager
from tests.waiting import free_port, wait_until

pytestmark = pytest.mark.system


@pytest.fixture
def whsec(tmp_path: Path) -> tuple[str, Path]:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    path = tmp_path / "webhook.secret"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret, path


def alerts_toml(
    url: str, secret_file: Path, *, kind: str = "webhook", for_seconds: float = 2
) -> str:
    sink = f'[[alerts.sink]]\nkind = "{kind}"\nurl = "{url}"\n'
    if kind == "webhook":
        sink += f'signing_secret_file = "{secret_file}"\n'
    return f"[alerts]\nfor_seconds = {for_seconds}\nresolve_hold_seconds = 1\n\n{sink}"


def pages(receiver: Receiver) -> list[dict[str, Any]]:
    """Distinct notifications by webhook-id (the receiver dedupes, as a real one would)."""
    seen: dict[str, dict[str, Any]] = {}
    for r in receiver.received("/hook"):
        seen.setdefault(r.headers["webhook-id"], r.json())
    return list(seen.values())


def alerts_named(receiver: Receiver, name: str, status: str | None = None) -> list[dict[str, Any]]:
    out = []
    for body in pages(receiver):
        for a in body["alerts"]:
            if a["labels"]["alertname"] == name and (status is None or a["status"] == status):
                out.append(a)
    return out


def verify_all(receiver: Receiver, secret: str) -> int:
    hook = Webhook(secret)
    n = 0
    for r in receiver.received("/hook"):
        hook.verify(
            r.body,
            {k: r.headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")},
        )
        n += 1
    return n


@pytest.fixture
def webhook(receivers: Callable[..., Receiver]) -> Receiver:
    return receivers()


@pytest.fixture
def alerting_daemon(
    tmp_path: Path, sim: Sim, webhook: Receiver, whsec: tuple[str, Path]
) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(url: str | None = None, **tunnel: Any) -> Daemon:
        cfg = daemon_config(
            tmp_path,
            sim,
            tunnels={"portal": {"unhealthy_after_seconds": 60, **tunnel}},
            extra=alerts_toml(url or f"{webhook.url}/hook", whsec[1]),
        )
        d = start_daemon(cfg)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def test_partition_pages_no_edge_connections_then_resolves_on_heal(
    sim: Sim, webhook: Receiver, whsec: tuple[str, Path], alerting_daemon: Callable[..., Daemon]
) -> None:
    d = alerting_daemon()
    victim = d.wait_ready("portal", 2)[0]
    sim.fault("partition", connector_id=victim["connector_id"])
    firing = wait_until(
        lambda: alerts_named(webhook, "ReplicaNoEdgeConnections", "firing"),
        timeout=20,
        what="ReplicaNoEdgeConnections page",
    )
    labels = firing[0]["labels"]
    assert labels["tunnel"] == "portal" and labels["slot"] == str(victim["slot"])
    assert labels["host"] == "test-host" and labels["severity"] == "critical"
    assert "0 edge connections" in firing[0]["annotations"]["summary"] or firing[0]["annotations"]
    sim.fault("heal")
    wait_until(
        lambda: alerts_named(webhook, "ReplicaNoEdgeConnections", "resolved"),
        timeout=60,
        what="resolve after heal",
    )
    # Every delivery carries a valid Standard Webhooks signature; a tampered body fails.
    assert verify_all(webhook, whsec[0]) >= 2
    r: Recorded = webhook.received("/hook")[0]
    with pytest.raises(Exception, match=r"(?i)signature"):
        Webhook(whsec[0]).verify(
            r.body.replace(b"portal", b"p0rtal"),
            {k: r.headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")},
        )


def test_quick_replacement_pages_nobody_but_a_slow_one_pages_replica_down(
    tmp_path: Path, sim: Sim, webhook: Receiver, alerting_daemon: Callable[..., Daemon]
) -> None:
    from tests.harness import CLOUDFLARED_SIM

    broken_flag = tmp_path / "binary-broken"
    wrapper = tmp_path / "cloudflared"
    wrapper.write_text(
        f'#!/bin/sh\n[ -e "{broken_flag}" ] && exit 1\nexec {CLOUDFLARED_SIM} "$@"\n'
    )
    wrapper.chmod(0o755)
    cfg_text = None
    d = alerting_daemon()
    d.stop()
    cfg_text = d.config.read_text().replace(f'path = "{CLOUDFLARED_SIM}"', f'path = "{wrapper}"')
    d.config.write_text(cfg_text)
    d = start_daemon(d.config)
    try:
        reps = d.wait_ready("portal", 2)
        # 1. kill -9, replacement ready well inside for_seconds: no page.
        os.kill(reps[0]["pid"], signal.SIGKILL)
        d.wait_ready("portal", 2)
        # 2. a marker fault pages; pages are in order, so once it is here any ReplicaDown from
        #    step 1 would be too.
        sim.fault("partition", connector_id=d.primaries("portal")[1]["connector_id"])
        wait_until(
            lambda: alerts_named(webhook, "ReplicaNoEdgeConnections", "firing"),
            timeout=20,
            what="marker page",
        )
        assert alerts_named(webhook, "ReplicaDown") == []
        sim.fault("heal")
        # 3. replacements fail for longer than for_seconds: ReplicaDown pages, then resolves.
        broken_flag.touch()
        os.kill(d.primaries("portal")[0]["pid"], signal.SIGKILL)
        wait_until(
            lambda: alerts_named(webhook, "ReplicaDown", "firing"),
            timeout=20,
            what="ReplicaDown page",
        )
        broken_flag.unlink()
        wait_until(
            lambda: alerts_named(webhook, "ReplicaDown", "resolved"),
            timeout=60,
            what="ReplicaDown resolved",
        )
    finally:
        d.stop()


def test_pages_survive_receiver_outage_and_daemon_kill_9(
    tmp_path: Path,
    sim: Sim,
    whsec: tuple[str, Path],
    receivers: Callable[..., Receiver],
    alerting_daemon: Callable[..., Daemon],
) -> None:
    port = free_port()  # the receiver will live here, but is down for the whole fault
    d = alerting_daemon(url=f"http://127.0.0.1:{port}/hook")
    victim = d.wait_ready("portal", 2)[1]
    sim.fault("partition", connector_id=victim["connector_id"])
    wait_until(
        lambda: any("ReplicaNoEdgeConnections" in a for a in d.status()["alerts_firing"]),
        timeout=20,
        what="alert firing (queued, receiver down)",
    )
    assert d.status()["alerts"]["sinks"][0]["pending"] >= 1
    replica_pids = [r["pid"] for r in d.tunnel("portal")["replicas"]]
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(timeout=10)
    sim.fault("heal")
    # A new daemon adopts the replicas (they kept serving), restores the firing alert, and
    # resolves it once the healed replica has its connections back.
    d2 = start_daemon(d.config)
    try:
        adopted = {r["pid"] for r in d2.wait_ready("portal", 2, timeout=40)}
        assert adopted == set(replica_pids)
        wait_until(lambda: not d2.status()["alerts_firing"], timeout=60, what="resolved")
        receiver = receivers(port)
        wait_until(
            lambda: alerts_named(receiver, "ReplicaNoEdgeConnections", "resolved"),
            timeout=60,
            what="late delivery of fire and resolve",
        )
        statuses = [a["status"] for a in alerts_named(receiver, "ReplicaNoEdgeConnections")]
        assert statuses == ["firing", "resolved"]
        ids = [r.headers["webhook-id"] for r in receiver.received("/hook")]
        assert len(set(ids)) == len(pages(receiver))
        assert verify_all(receiver, whsec[0]) == len(ids)
    finally:
        d2.stop()


def test_alert_reaches_real_alertmanager_and_resolves(
    tmp_path: Path,
    sim: Sim,
    alertmanager: Alertmanager,
    whsec: tuple[str, Path],
) -> None:
    cfg = daemon_config(
        tmp_path,
        sim,
        tunnels={"portal": {"unhealthy_after_seconds": 60}},
        extra=alerts_toml(alertmanager.url, whsec[1], kind="alertmanager"),
    )
    d = start_daemon(cfg)
    try:
        victim = d.wait_ready("portal", 2)[0]
        sim.fault("partition", connector_id=victim["connector_id"])

        def am_alerts(status: str) -> list[dict[str, Any]]:
            out = []
            for r in alertmanager.webhook.received():
                body = json.loads(r.body)
                out += [
                    a
                    for a in body["alerts"]
                    if a["labels"].get("alertname") == "ReplicaNoEdgeConnections"
                    and a["status"] == status
                ]
            return out

        firing = wait_until(lambda: am_alerts("firing"), timeout=30, what="via alertmanager")
        assert firing[0]["labels"]["slot"] == str(victim["slot"])
        sim.fault("heal")
        wait_until(lambda: am_alerts("resolved"), timeout=60, what="resolved via alertmanager")
    finally:
        d.stop()
