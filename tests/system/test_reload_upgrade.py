"""Issue 6: reload applies a new config with the least disruption, or keeps the old one; a
cloudflared upgrade rolls with a canary and rolls back when the canary fails."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import CLOUDFLARED_SIM, Daemon, Load, Sim, daemon_config, start_daemon
from tests.host.conftest import ReleaseServer, artefact, sha256
from tests.waiting import wait_until

pytestmark = pytest.mark.system
RunDaemon = Callable[..., Daemon]


def test_invalid_config_on_reload_keeps_the_running_one(sim: Sim, run_daemon: RunDaemon) -> None:
    d = run_daemon()
    pids = {r["pid"] for r in d.wait_ready("portal", 2)}
    good = d.config.read_text()
    d.config.write_text(good.replace("replicas = 2", 'replicas = "lots"'))
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload_rejected" in d.output(), timeout=10, what="rejection logged")
    assert "tunnel[0].replicas" in d.output()
    assert d.proc.poll() is None
    assert {r["pid"] for r in d.wait_ready("portal", 2)} == pids


def test_reload_scales_adds_and_removes_tunnels(
    tmp_path: Path, origin_url: str, run_daemon: RunDaemon
) -> None:
    from tests.harness import start_sim

    s = start_sim(tmp_path / "sim2", {"portal": origin_url, "api": origin_url})
    try:
        (tmp_path / "d").mkdir()
        cfg = daemon_config(tmp_path / "d", s, tunnels={"portal": {}})
        d = start_daemon(cfg)
        try:
            before = {r["pid"] for r in d.wait_ready("portal", 2)}
            with Load(s, "portal", rate_per_second=30) as load:
                new = daemon_config(
                    tmp_path / "d",
                    s,
                    tunnels={"portal": {"replicas": 3}, "api": {"replicas": 1}},
                    listen_port=int(d.url.rsplit(":", 1)[1]),
                )
                assert new == cfg
                d.proc.send_signal(signal.SIGHUP)
                three = d.wait_ready("portal", 3, timeout=20)
                assert before <= {r["pid"] for r in three}  # scaling up restarts nothing
                d.wait_ready("api", 1, timeout=20)
                # remove "api", back to 2 replicas of portal
                daemon_config(
                    tmp_path / "d",
                    s,
                    tunnels={"portal": {"replicas": 2}},
                    listen_port=int(d.url.rsplit(":", 1)[1]),
                )
                d.proc.send_signal(signal.SIGHUP)
                wait_until(
                    lambda: (
                        [t["name"] for t in d.status()["tunnels"]] == ["portal"]
                        and len(d.primaries("portal")) == 2
                    ),
                    timeout=20,
                    what="scaled down",
                )
                wait_until(lambda: not s.live_connector_ids("api"), timeout=20, what="api drained")
            assert load.failed == 0, load.failures[:5]
        finally:
            d.stop()
    finally:
        s.stop()


def _managed(
    tmp_path: Path,
    sim: Sim,
    server: ReleaseServer,
    version: str,
    body: bytes,
    listen_port: int | None = None,
) -> Path:
    server.publish(version, body)
    cfg = daemon_config(
        tmp_path,
        sim,
        tunnels={"portal": {}},
        cloudflared=str(tmp_path / "bin" / "cloudflared"),
        daemon_extra="ready_timeout_seconds = 6",
        listen_port=listen_port,
        extra=(
            f'[cloudflared.install]\nversion = "{version}"\nurl = "{server.template()}"\n'
            f'sha256 = "{sha256(body)}"\n'
        ),
    )
    text = cfg.read_text().replace("ready_timeout_seconds = 15\n", "")
    cfg.write_text(text)
    return cfg


def test_upgrade_rolls_with_a_canary_and_rolls_back_a_broken_one(
    tmp_path: Path, sim: Sim, release_server: ReleaseServer
) -> None:
    cfg = _managed(tmp_path, sim, release_server, "2026.8.2", artefact("2026.8.2"))
    d = start_daemon(cfg)
    port = int(d.url.rsplit(":", 1)[1])
    try:
        wait_until(
            lambda: {r["cloudflared_version"] for r in d.wait_ready("portal", 2)} == {"2026.8.2"},
            timeout=30,
            what="replicas on 2026.8.2",
        )
        link = tmp_path / "bin" / "cloudflared"
        wait_until(lambda: link.resolve().parent.name == "2026.8.2", timeout=10)
        with Load(sim, "portal", rate_per_second=30) as load:
            # A good upgrade: every replica moves to the new version, one at a time.
            _managed(tmp_path, sim, release_server, "2026.9.1", artefact("2026.9.1"), port)
            d.proc.send_signal(signal.SIGHUP)
            wait_until(
                lambda: (
                    {r["cloudflared_version"] for r in d.wait_ready("portal", 2)} == {"2026.9.1"}
                ),
                timeout=60,
                what="replicas on 2026.9.1",
            )
            wait_until(
                lambda: link.resolve().parent.name == "2026.9.1",
                timeout=10,
                what="cloudflared.path switched after the roll",
            )
            good_pids = {r["pid"] for r in d.primaries("portal")}
            # A broken one: the canary never connects; it is abandoned and rolled back.
            broken = (
                f"#!/bin/sh\nexec env CLOUDFLARED_SIM_VERSION=2026.10.0 "
                f'CLOUDFLARED_SIM_FAULT=never-connect {CLOUDFLARED_SIM} "$@"\n'
            ).encode()
            _managed(tmp_path, sim, release_server, "2026.10.0", broken, port)
            d.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "upgrade_rolled_back" in d.output(), timeout=40, what="rollback")
            wait_until(
                lambda: any("CloudflaredUpgradeFailed" in a for a in d.status()["alerts_firing"]),
                timeout=20,
                what="alert",
            )
            assert {r["pid"] for r in d.wait_ready("portal", 2)} == good_pids
            assert link.resolve().parent.name == "2026.9.1"
        assert load.failed == 0, load.failures[:5]
    finally:
        d.stop()
