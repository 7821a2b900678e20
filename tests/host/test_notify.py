"""`tunnelkeeper run` as systemd sees it: sd_notify on a real AF_UNIX datagram socket, and the
process tree running under MemoryDenyWriteExecute's rule (no writable+executable memory)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.harness import (
    TUNNELKEEPER,
    Daemon,
    Sim,
    daemon_config,
    start_daemon,
    start_sim,
    stop_process,
)
from tests.waiting import free_port, wait_until


class NotifyListener:
    """Plays systemd's side of $NOTIFY_SOCKET; snapshots the daemon's /status on READY=1."""

    def __init__(self, path: Path, daemon_url: str) -> None:
        self.path = path
        self.daemon_url = daemon_url
        self.messages: list[str] = []  # every field of every datagram, in arrival order
        self.status_at_ready: dict[str, Any] | None = None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = data.decode(errors="replace").split("\n")
            if "READY=1" in fields and self.status_at_ready is None:
                self.status_at_ready = self._status_now()
            self.messages.extend(fields)

    def _status_now(self) -> dict[str, Any]:
        def fetch() -> dict[str, Any]:
            result: dict[str, Any] = httpx.get(self.daemon_url + "/status", timeout=2).json()
            return result

        return wait_until(fetch, timeout=10, what="daemon /status at READY=1")

    def count(self, field: str) -> int:
        return sum(1 for m in list(self.messages) if m == field)

    def with_prefix(self, prefix: str) -> list[str]:
        return [m for m in list(self.messages) if m.startswith(prefix)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    s = start_sim(tmp_path_factory.mktemp("sim"), {"portal": "builtin"})
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def no_leftover_replicas(tmp_path: Path) -> Iterator[None]:
    """Every replica a test's daemon started is gone afterwards (drained on SIGTERM)."""
    yield
    left = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(str(tmp_path) in part for part in (p.info["cmdline"] or []))
        and "cloudflared-sim" in " ".join(p.info["cmdline"] or [])
    ]
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    assert not left, f"replicas left behind: {[p.pid for p in left]}"


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[NotifyListener, int]]:
    port = free_port()
    n = NotifyListener(tmp_path / "notify.sock", f"http://127.0.0.1:{port}")
    yield n, port
    n.close()


def replicas_of(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return [
            p
            for p in psutil.Process(pid).children(recursive=True)
            if "cloudflared-sim" in " ".join(p.cmdline())
        ]
    return []


def test_sd_notify_ready_status_watchdog_stopping(
    tmp_path: Path, sim: Sim, listener: tuple[NotifyListener, int]
) -> None:
    notify, port = listener
    cfg = daemon_config(tmp_path, sim, tunnels={"portal": {}}, listen_port=port)
    d = start_daemon(cfg, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"})
    try:
        wait_until(lambda: notify.count("READY=1") == 1, timeout=30, what="READY=1")
        status = notify.status_at_ready
        assert status is not None
        portal = next(t for t in status["tunnels"] if t["name"] == "portal")
        assert portal["ready_replicas"] >= 1, status  # READY=1 only once a replica serves

        d.wait_ready("portal", 2)
        wait_until(lambda: notify.count("WATCHDOG=1") >= 3, timeout=30, what="WATCHDOG=1 x3")
        assert any("portal" in s for s in notify.with_prefix("STATUS="))

        children = replicas_of(d.proc.pid)
        assert len(children) == 2
        for child in children:
            env = child.environ()
            assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env, child.pid

        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=60) == 0
        wait_until(lambda: notify.count("STOPPING=1") == 1, timeout=10, what="STOPPING=1")
        assert notify.count("READY=1") == 1
        assert not any(c.is_running() and c.status() != "zombie" for c in children)
    finally:
        d.stop()


# prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN): the kernel's own form of the rule systemd's
# MemoryDenyWriteExecute= enforces with seccomp; inherited by children and kept across exec.
MDWE_LAUNCHER = """
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(3)
os.execv(sys.argv[1], sys.argv[1:])
"""


def mdwe_available() -> bool:
    probe = [sys.executable, "-c", MDWE_LAUNCHER, "/bin/true"]
    return subprocess.run(probe, timeout=30, check=False).returncode == 0


def test_daemon_and_replicas_run_with_no_writable_executable_memory(
    tmp_path: Path, sim: Sim
) -> None:
    if not mdwe_available():
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    cfg = daemon_config(tmp_path, sim, tunnels={"portal": {}})
    port = int(cfg.read_text().split('listen = "127.0.0.1:')[1].split('"')[0])
    log_path = tmp_path / "daemon.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", MDWE_LAUNCHER, TUNNELKEEPER, "run", "-c", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    d = Daemon(proc, cfg, f"http://127.0.0.1:{port}", log_path)
    try:
        d.wait_ready("portal", 2, timeout=40)
        answered = wait_until(
            lambda: sim.request("portal").status_code == 200, timeout=20, what="a request"
        )
        assert answered
        assert proc.poll() is None, d.output()[-2000:]
        assert "MemoryError" not in d.output() and "Permission denied" not in d.output()
    finally:
        code = stop_process(proc, timeout=60)
    assert code == 0, d.output()[-2000:]


def stop_pids(pids: list[int]) -> None:
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            p.terminate()
            procs.append(p)
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def test_restart_signal_hands_over_without_draining(tmp_path: Path, sim: Sim) -> None:
    """The unit's RestartKillSignal=SIGUSR2: the daemon goes, the replicas keep serving."""
    cfg = daemon_config(tmp_path, sim, tunnels={"portal": {}})
    d = start_daemon(cfg)
    pids: list[int] = []
    try:
        pids = [r["pid"] for r in d.wait_ready("portal", 2)]
        d.proc.send_signal(signal.SIGUSR2)
        code = d.proc.wait(timeout=30)
        assert code in (0, -signal.SIGUSR2)  # the unit has SuccessExitStatus=SIGUSR2
        assert all(psutil.pid_exists(p) for p in pids)
        assert wait_until(lambda: sim.request("portal").status_code == 200, timeout=20)
        ledger = (tmp_path / "state" / "replicas.json").read_text()
        assert all(f'"pid": {p}' in ledger for p in pids), ledger
    finally:
        d.stop()
        stop_pids(pids)


def test_reload_notifies_reloading_then_ready(
    tmp_path: Path, sim: Sim, listener: tuple[NotifyListener, int]
) -> None:
    notify, port = listener
    cfg = daemon_config(tmp_path, sim, tunnels={"portal": {}}, listen_port=port)
    d = start_daemon(cfg, env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        wait_until(lambda: notify.count("READY=1") == 1, timeout=30, what="READY=1")
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: notify.count("RELOADING=1") == 1, timeout=5, what="RELOADING=1")
        wait_until(lambda: notify.count("READY=1") == 2, timeout=10, what="READY=1 again")
        seen = list(notify.messages)
        readies = [i for i, m in enumerate(seen) if m == "READY=1"]
        assert readies[0] < seen.index("RELOADING=1") < readies[1]
    finally:
        d.stop()
