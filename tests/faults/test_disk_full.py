"""Fault: the state disk fills up (state_dir on a 1 MiB tmpfs, filled to the last byte once
the daemon runs; 64 KiB is too small for the outbox to even open: see docs/faults.md).

The ledger of replicas (state_dir/replicas.json) and the alert outbox live there. With the disk
full the daemon keeps supervising: a replica killed with -9 is replaced, requests keep flowing
through the other one, the write failures are logged, nothing crashes. Once space is freed,
the ledger is written again. A page raised while the disk is full must still reach on-call.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.alerts.receiver import Receiver
from tests.faults.conftest import (
    alerts_named,
    alerts_toml,
    events,
    fault_config,
    webhook_sink,
)
from tests.harness import Daemon, Load, Sim
from tests.waiting import wait_until

pytestmark = pytest.mark.system


def fill(directory: Path) -> Path:
    """Write a file until the filesystem says ENOSPC; returns it."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                if os.write(fd, chunk) < len(chunk):
                    continue
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        # and the last partial block, byte by byte
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0"):
                pass
    finally:
        os.close(fd)
    return filler


def ledger_pids(state_dir: Path) -> set[int]:
    data = json.loads((state_dir / "replicas.json").read_text())
    return {int(r["pid"]) for r in data["replicas"]}


def test_full_state_disk_keeps_supervising_and_logs_the_failures(
    tmp_path: Path,
    tiny_tmpfs: Path,
    sim: Sim,
    run_daemon: Callable[..., Daemon],
) -> None:
    cfg = fault_config(tmp_path, sim)
    assert f'state_dir = "{tiny_tmpfs}"' in cfg.read_text()
    d = run_daemon(cfg)
    before = d.wait_ready("portal", 2)
    wait_until(lambda: ledger_pids(tiny_tmpfs) == {r["pid"] for r in before}, timeout=10)
    filler = fill(tiny_tmpfs)
    assert os.statvfs(tiny_tmpfs).f_bavail == 0
    with Load(sim, "portal", rate_per_second=20) as load:
        wait_until(lambda: load.results["ok"] >= 10, timeout=10, what="load flowing")
        victim = before[0]
        os.kill(victim["pid"], signal.SIGKILL)
        wait_until(
            lambda: victim["pid"] not in {r["pid"] for r in d.wait_ready("portal", 2)},
            timeout=20,
            what="replacement ready with the disk full",
        )
        wait_until(lambda: events(d, "ledger_write_failed") >= 1, timeout=10, what="logged")
        assert d.proc.poll() is None
        assert httpx.get(d.url + "/healthz", timeout=5).status_code == 200
        # Space comes back: the ledger catches up with the replicas that run now.
        filler.unlink()
        now = {r["pid"] for r in d.wait_ready("portal", 2)}
        wait_until(lambda: ledger_pids(tiny_tmpfs) == now, timeout=10, what="ledger rewritten")
        served = load.results["ok"]
        wait_until(lambda: load.results["ok"] >= served + 10, timeout=10, what="more load")
    assert load.failed <= 1, load.failures  # at most the request the victim was serving
    assert all("failed mid-request" in f for f in load.failures), load.failures
    assert "Traceback" not in d.output()


def test_page_is_delivered_while_the_state_disk_is_full(
    tmp_path: Path,
    tiny_tmpfs: Path,
    sim: Sim,
    receivers: Callable[..., Receiver],
    whsec: tuple[str, Path],
    run_daemon: Callable[..., Daemon],
) -> None:
    hook = receivers()
    cfg = fault_config(
        tmp_path,
        sim,
        tunnels={"portal": {"replicas": 1, "unhealthy_after_seconds": 60}},
        extra=alerts_toml(webhook_sink(f"{hook.url}/hook", whsec[1], name="oncall")),
    )
    d = run_daemon(cfg)
    replica = d.wait_ready("portal", 1)[0]
    fill(tiny_tmpfs)
    sim.fault("partition", connector_id=replica["connector_id"])
    wait_until(lambda: events(d, "alert_fired") >= 1, timeout=20, what="alert raised")
    # A local receiver that answers at once gets a page within milliseconds of alert_fired.
    # (The tunnel's only replica is dark: on-call gets TunnelDown, which inhibits the
    # replica's own alert.)
    wait_until(
        lambda: alerts_named(hook, "TunnelDown", "firing"),
        timeout=5,
        what="page delivered with the disk full",
    )
