"""A cold start launches each tunnel's first replica before the daemon has loaded its event
loop and supervision (service/coldstart.py); the daemon then supervises it as its own child."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from tests.harness import TUNNELKEEPER, Daemon, Sim, daemon_config, start_daemon
from tests.servers import assert_no_replicas_left
from tests.waiting import wait_until

pytestmark = pytest.mark.system
RunDaemon = Callable[..., Daemon]


@pytest.fixture
def sim(make_sim: Callable[..., Sim]) -> Sim:
    return make_sim("portal", "admin")


def test_cold_start_launches_slot_0_early_and_the_daemon_raises_it_as_its_own(
    sim: Sim, run_daemon: RunDaemon
) -> None:
    started = time.time()
    d = run_daemon(tunnels={"portal": {}, "admin": {}})
    ready = {r["pid"]: r for t in ("portal", "admin") for r in d.wait_ready(t, 2)}
    spawned = d.events("replica_spawned")
    early = {(e["tunnel"], e["slot"]): e["pid"] for e in spawned if e.get("early")}
    # slot 0 of each tunnel was launched before the daemon loaded; slot 1 by its first converge
    assert set(early) == {("portal", 0), ("admin", 0)}
    assert len(spawned) == 4
    [taken] = d.events("replicas_launched_early")
    assert taken["replicas"] == 2 and taken["seconds_before"] >= 0
    for pid in early.values():
        assert ready[pid]["started_because"] == "start"  # not "adopted": it is the daemon's own
        assert psutil.Process(pid).ppid() == d.proc.pid
    # its age counts from its launch: it cannot have started before the daemon did (the kernel's
    # create time is whole seconds off, through its boot time)
    for e in d.events("replica_ready"):
        if (e["tunnel"], e["slot"]) in early:
            stamp = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
            assert 0 < e["startup_seconds"] <= stamp - started
    # exactly what the daemon would have launched: nothing rolled, nothing adopted
    assert not d.events("replica_draining")
    assert not d.events("replica_adopted")
    assert not d.events("replicas_adopted")
    # its own child: reaped with its exit code, and replaced like any other
    victim = early[("portal", 0)]
    psutil.Process(victim).kill()
    exited = wait_until(
        lambda: [e for e in d.events("replica_exited") if e["pid"] == victim],
        timeout=15,
        what="the early replica's exit",
    )
    assert exited[0]["returncode"] == -9
    wait_until(
        lambda: victim not in {r["pid"] for r in d.wait_ready("portal", 2)},
        timeout=20,
        what="the early replica replaced",
    )
    ledger = json.loads((d.config.parent / "state" / "replicas.json").read_text())
    assert victim not in {row["pid"] for row in ledger["replicas"]}


def test_a_token_the_daemon_fetches_itself_is_not_launched_early(
    sim: Sim, run_daemon: RunDaemon
) -> None:
    """A command (like Vault and AWS) may be slow or remote: the token feed reads it."""
    command = f'{{ source = "command", argv = ["/bin/cat", "{sim.token_file("portal")}"] }}'
    d = run_daemon(tunnels={"portal": {"token": command}, "admin": {}})
    d.wait_ready("portal", 2)
    d.wait_ready("admin", 2)
    early = {e["tunnel"] for e in d.events("replica_spawned") if e.get("early")}
    assert early == {"admin"}


def test_a_daemon_that_cannot_listen_leaves_no_early_replica_running(
    sim: Sim, tmp_path: Path
) -> None:
    """The listen address is checked after the early launch: a daemon that must exit then stops
    what it launched, rather than leave replicas that nothing supervises."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = daemon_config(tmp_path, sim, tunnels={"portal": {}}, listen_port=port)
        run = subprocess.run(
            [TUNNELKEEPER, "run", "-c", str(cfg)], capture_output=True, text=True, timeout=60
        )
    assert run.returncode == 1
    assert '"listen_failed"' in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    ledger = json.loads((tmp_path / "state" / "replicas.json").read_text())
    assert ledger["replicas"] == []
    assert not list((tmp_path / "run" / "replicas").iterdir())  # no token file left behind
    assert_no_replicas_left(tmp_path)


def test_a_clean_stop_leaves_the_next_start_cold_and_a_lost_ledger_does_not(
    sim: Sim, run_daemon: RunDaemon
) -> None:
    """After a drain nothing runs: the next start launches early again. After a kill -9 with the
    ledger lost, the replicas still run: nothing is launched early (it would only be drained
    again), and adoption's sweep finds them by their command lines."""
    d = run_daemon(tunnels={"portal": {}})
    d.wait_ready("portal", 2)
    assert d.stop() == 0
    d = start_daemon(d.config)
    try:
        pids = {r["pid"] for r in d.wait_ready("portal", 2)}
        # the log is appended to: the first start's early launch, then this one's
        assert [e["slot"] for e in d.events("replica_spawned") if e.get("early")] == [0, 0]
        d.proc.kill()
        d.proc.wait(timeout=10)
        (d.config.parent / "state" / "replicas.json").unlink()
        (d.config.parent / "daemon.log").unlink()
    finally:
        d.stop()
    d = start_daemon(d.config)
    try:
        assert {r["pid"] for r in d.wait_ready("portal", 2)} == pids
        assert not [e for e in d.events("replica_spawned") if e.get("early")]
        assert len(d.events("unlisted_replica_found")) == 2
    finally:
        d.stop()
