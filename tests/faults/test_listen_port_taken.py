"""Fault: another program holds the daemon's own metrics/status port (``daemon.listen``) when it
restarts (after a crash, kill -9 here).

The new daemon cannot serve /metrics: it says so, naming the config key, and exits 1 without
touching the replicas, which keep serving. Once the port is free, the next start adopts them.
(A replica's metrics port taken before cloudflared binds it: tests/system/test_bad_input.py.)
"""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.conftest import fault_config
from tests.harness import TUNNELKEEPER, Daemon, Load, Sim
from tests.waiting import wait_until

pytestmark = pytest.mark.system


def test_listen_port_taken_on_restart_is_a_clear_exit_and_replicas_keep_serving(
    tmp_path: Path, sim: Sim, run_daemon: Callable[..., Daemon]
) -> None:
    cfg = fault_config(tmp_path, sim)
    d = run_daemon(cfg)
    pids = {r["pid"] for r in d.wait_ready("portal", 2)}
    port = int(d.url.rsplit(":", 1)[1])
    with Load(sim, "portal", rate_per_second=20) as load:
        wait_until(lambda: load.results["ok"] >= 10, timeout=10, what="load flowing")
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(timeout=10)
        with socket.socket() as thief:
            thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            thief.bind(("127.0.0.1", port))
            thief.listen()
            failed = subprocess.run(
                [TUNNELKEEPER, "run", "-c", str(cfg)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        text = failed.stdout + failed.stderr
        assert failed.returncode == 1, text[-2000:]
        assert "daemon.listen" in text and f"127.0.0.1:{port}" in text
        assert "address already in use" in text.lower()
        assert "Traceback" not in text
        served = load.results["ok"]
        wait_until(lambda: load.results["ok"] >= served + 10, timeout=10, what="still serving")
        d2 = run_daemon(cfg)
        assert {r["pid"] for r in d2.wait_ready("portal", 2)} == pids
        served = load.results["ok"]
        wait_until(lambda: load.results["ok"] >= served + 10, timeout=10, what="after adoption")
    assert load.failed == 0, load.failures[:5]
