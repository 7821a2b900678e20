"""Fixtures for cloudflared-sim tests: the simulator as a real process, real edges on loopback.

`spawn(...)` starts `cloudflared-sim` with a clean environment (no inherited TUNNEL_*), drains
stdout/stderr in threads (the flood mode writes thousands of lines a second), and stops every
process it started by PID (SIGTERM, wait, SIGKILL) at teardown, even when the test fails.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import stop_process
from tests.waiting import free_port, wait_until

CLOUDFLARED_SIM = str(Path(sys.executable).parent / "cloudflared-sim")


def make_token(tunnel_id: str | None = None) -> str:
    """A well-formed tunnel token no edge knows (what cloudflared accepts at start-up)."""
    body = {
        "a": "0" * 32,
        "t": tunnel_id or str(uuid.uuid4()),
        "s": base64.b64encode(os.urandom(32)).decode(),
    }
    return base64.b64encode(json.dumps(body).encode()).decode()


def clean_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    env.update(extra or {})
    return env


class _Drain:
    """Reads a pipe to the end in a thread, keeping lines (bounded) and a count."""

    def __init__(self, stream: Any, keep: int = 200_000) -> None:
        self.lines: list[bytes] = []
        self.count = 0
        self._keep = keep
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: Any) -> None:
        for line in iter(stream.readline, b""):
            with self._lock:
                self.count += 1
                if len(self.lines) < self._keep:
                    self.lines.append(line)
        stream.close()

    def snapshot(self) -> list[bytes]:
        with self._lock:
            return list(self.lines)

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)


class CfProc:
    def __init__(
        self, argv: list[str], env: dict[str, str], metrics: str | None, *, sighup_ignored: bool
    ) -> None:
        self.metrics = metrics
        # SIGHUP's disposition as systemd gives a service (default), not whatever the test run
        # inherited (`nohup` ignores it, and an ignored SIGHUP stays ignored across exec; the
        # real binary, like any Go program, then keeps ignoring it)
        hup = signal.SIG_IGN if sighup_ignored else signal.SIG_DFL
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=lambda: signal.signal(signal.SIGHUP, hup),
        )
        self.stdout = _Drain(self.proc.stdout)
        self.stderr = _Drain(self.proc.stderr)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def records(self) -> list[dict[str, Any]]:
        """stderr JSON log lines (non-JSON lines are skipped)."""
        out = []
        for line in self.stderr.snapshot():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def messages(self) -> list[str]:
        return [str(r.get("message")) for r in self.records()]

    def wait_record(self, prefix: str, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for rec in self.records():
                msg = str(rec.get("message", ""))
                if msg.startswith(prefix) and all(rec.get(k) == v for k, v in fields.items()):
                    return rec
            return None

        return wait_until(find, timeout=timeout, what=f"log line {prefix!r} {fields}")

    def url(self, path: str) -> str:
        assert self.metrics, "started without --metrics"
        return f"http://{self.metrics}{path}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url(path), timeout=5.0)

    def ready(self) -> tuple[int, dict[str, Any]]:
        r = self.get("/ready")
        return r.status_code, r.json()

    def metric(self, name: str) -> float | None:
        """Value of an unlabelled sample, or the sum over a labelled family's samples."""
        total: float | None = None
        for line in self.get("/metrics").text.splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            if sample == name or sample.startswith(name + "{"):
                total = (total or 0.0) + float(value)
        return total

    def wait_ready(self, connections: int = 1, timeout: float = 20.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status, body = self.ready()
            return body if status == 200 and body["readyConnections"] >= connections else None

        return wait_until(check, timeout=timeout, what=f"/ready with {connections} connections")

    def wait_exit(self, timeout: float = 15.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.stdout.join()
        self.stderr.join()
        return rc

    def stop(self) -> int:
        rc = stop_process(self.proc)
        self.stdout.join()
        self.stderr.join()
        return rc


Spawn = Callable[..., CfProc]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """spawn(args, env=None, metrics=True, sighup_ignored=False): cloudflared-sim <args>;
    `metrics=True` inserts `--metrics 127.0.0.1:<free port>` right after `tunnel`."""
    started: list[CfProc] = []

    def start(
        args: list[str],
        env: dict[str, str] | None = None,
        metrics: bool = True,
        sighup_ignored: bool = False,
    ) -> CfProc:
        argv = list(args)
        addr = None
        if metrics:
            addr = f"127.0.0.1:{free_port()}"
            argv[argv.index("tunnel") + 1 : argv.index("tunnel") + 1] = ["--metrics", addr]
        proc = CfProc(
            [CLOUDFLARED_SIM, *argv], clean_env(tmp_path, env), addr, sighup_ignored=sighup_ignored
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def run_once(
    args: list[str], tmp_path: Path, env: dict[str, str] | None = None, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """Run cloudflared-sim to completion (for commands that exit on their own)."""
    return subprocess.run(
        [CLOUDFLARED_SIM, *args],
        env=clean_env(tmp_path, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tunnel.token"
    path.write_text(make_token() + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def silent_edge() -> Iterator[str]:
    """An edge address that accepts TCP but never answers (the kernel completes handshakes)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on: connections are refused at once."""
    return free_port()


@dataclass
class Sim:
    proc: subprocess.Popen[bytes]
    ready: dict[str, Any]
    token_dir: Path

    @property
    def edge(self) -> str:
        return str(self.ready["edge"])

    @property
    def http(self) -> str:
        return str(self.ready["http"])

    def token_path(self, name: str) -> Path:
        return self.token_dir / f"{name}.token"

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        r = httpx.request(
            method,
            f"{self.ready['api']}{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.ready['api_token']}"},
            timeout=10.0,
        )
        assert r.status_code == 200, r.text
        return r.json()["result"]

    def fault(self, action: str, **extra: Any) -> None:
        self.api("POST", "/sim/faults", {"action": action, **extra})


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """One `tunnelkeeper sim` (edge, API, entry, builtin origin) shared by a test module."""
    work = tmp_path_factory.mktemp("edge")
    ready_file = work / "ready.json"
    argv = [sys.executable, "-m", "tunnelkeeper", "sim", "--token-dir", str(work / "tokens")]
    for name in ("portal", "partition", "rotated", "drain"):
        argv += ["--tunnel", f"{name}=builtin"]
    argv += ["--tunnel", f"dead=http://127.0.0.1:{free_port()}"]  # an origin that refuses
    argv += ["--ready-file", str(ready_file)]
    with (work / "sim.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: ready_file.exists() or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, (work / "sim.log").read_text()
        yield Sim(proc, json.loads(ready_file.read_text()), work / "tokens")
    finally:
        stop_process(proc)
