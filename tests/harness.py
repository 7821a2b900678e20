"""Real-process harness shared by system tests and benchmarks: the simulator, the daemon, a load.

Everything is started as a subprocess and stopped by the pid we started (SIGTERM, wait, SIGKILL).
All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.waiting import free_port, wait_until

VENV_BIN = Path(sys.executable).parent
TUNNELKEEPER = str(VENV_BIN / "tunnelkeeper")
CLOUDFLARED_SIM = str(VENV_BIN / "cloudflared-sim")


def run_cli(
    command: str, config: Path, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``tunnelkeeper COMMAND ARGS -c CONFIG`` as an operator runs it: exit code and output."""
    return subprocess.run(
        [TUNNELKEEPER, command, *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> int | None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode


@dataclass
class Sim:
    proc: subprocess.Popen[bytes]
    dir: Path
    info: dict[str, Any]

    @property
    def edge(self) -> str:
        return str(self.info["edge"])

    @property
    def api(self) -> str:
        return str(self.info["api"])

    @property
    def http(self) -> str:
        return str(self.info["http"])

    def token_file(self, tunnel: str) -> Path:
        return self.dir / f"{tunnel}.token"

    def token(self, tunnel: str) -> str:
        return self.token_file(tunnel).read_text().strip()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.info['api_token']}"}

    def fault(self, action: str, **kw: Any) -> None:
        r = httpx.post(
            f"{self.api}/sim/faults",
            json={"action": action, **kw},
            headers=self._headers(),
            timeout=5,
        )
        r.raise_for_status()

    def state(self) -> dict[str, Any]:
        r = httpx.get(f"{self.api}/sim/state", headers=self._headers(), timeout=5)
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    def api_get(self, path: str) -> Any:
        r = httpx.get(
            f"{self.api}/accounts/{self.info['account_id']}{path}",
            headers=self._headers(),
            timeout=5,
        )
        r.raise_for_status()
        return r.json()["result"]

    def connectors(self, tunnel: str) -> list[dict[str, Any]]:
        tid = self.info["tunnels"][tunnel]
        result: list[dict[str, Any]] = self.api_get(f"/cfd_tunnel/{tid}/connections")
        return result

    def live_connector_ids(self, tunnel: str) -> set[str]:
        return {
            c["id"]
            for c in self.connectors(tunnel)
            if any(not conn.get("is_pending_reconnect") for conn in c.get("conns", []))
        }

    def request(self, tunnel: str, path: str = "/", timeout: float = 10.0) -> httpx.Response:
        return httpx.get(self.http + path, headers={"Host": tunnel}, timeout=timeout)

    def stop(self) -> None:
        stop_process(self.proc)


def start_sim(workdir: Path, tunnels: dict[str, str], *extra: str) -> Sim:
    """tunnels: NAME -> origin URL (or "builtin")."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / "sim-ready.json"
    args = [TUNNELKEEPER, "sim", "--token-dir", str(workdir), "--ready-file", str(ready), *extra]
    for name, origin in tunnels.items():
        args += ["--tunnel", f"{name}={origin}"]
    with open(workdir / "sim.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        wait_until(
            lambda: ready.exists() or proc.poll() is not None, timeout=20, what="sim ready file"
        )
        if proc.poll() is not None:
            raise RuntimeError(f"sim exited: {(workdir / 'sim.log').read_text()[-2000:]}")
        info = json.loads(ready.read_text())
    except BaseException:
        stop_process(proc)
        raise
    return Sim(proc, workdir, info)


def daemon_config(
    workdir: Path,
    sim: Sim,
    *,
    tunnels: dict[str, dict[str, Any]],
    listen_port: int | None = None,
    cloudflared: str = CLOUDFLARED_SIM,
    daemon_extra: str = "",
    extra: str = "",
) -> Path:
    """Write a config for `tunnelkeeper run` against the simulator. tunnels: name -> overrides."""
    port = listen_port or free_port()
    lines = [
        "[daemon]",
        'host = "test-host"',
        f'listen = "127.0.0.1:{port}"',
        f'state_dir = "{workdir / "state"}"',
        f'runtime_dir = "{workdir / "run"}"',
        "probe_interval_seconds = 0.5",
        "unresponsive_after_seconds = 2",
        "ready_timeout_seconds = 15",
        daemon_extra,
        "",
        "[cloudflared]",
        f'path = "{cloudflared}"',
        f'args = ["--edge", "{sim.edge}"]',
        "",
    ]
    for name, over in tunnels.items():
        lines.append("[[tunnel]]")
        lines.append(f'name = "{name}"')
        merged: dict[str, Any] = {
            "replicas": 2,
            "grace_period_seconds": 5,
            "unhealthy_after_seconds": 3,
            "token": f'{{ source = "file", path = "{sim.token_file(name)}" }}',
        }
        merged.update(over)
        for k, v in merged.items():
            lines.append(f"{k} = {v}")
        lines.append("")
    lines.append(extra)
    path = workdir / "tunnelkeeper.toml"
    path.write_text("\n".join(lines))
    return path


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    config: Path
    url: str
    log_path: Path

    def status(self) -> dict[str, Any]:
        r = httpx.get(self.url + "/status", timeout=5)
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    def tunnel(self, name: str) -> dict[str, Any]:
        return next(t for t in self.status()["tunnels"] if t["name"] == name)

    def primaries(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.tunnel(name)["replicas"] if r["role"] == "primary"]

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=5).text

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        """The daemon's JSON log records of the event ``name``, in order."""
        found = []
        for line in self.output().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == name:
                found.append(record)
        return found

    def wait_ready(self, tunnel: str, replicas: int, timeout: float = 30) -> list[dict[str, Any]]:
        def ready() -> list[dict[str, Any]]:
            prim = self.primaries(tunnel)
            ok = [r for r in prim if r["ready_connections"] > 0]
            return prim if len(ok) == replicas and len(prim) == replicas else []

        return wait_until(ready, timeout=timeout, what=f"{replicas} ready replicas of {tunnel}")

    def stop(self, timeout: float = 30) -> int | None:
        return stop_process(self.proc, timeout=timeout)


def start_daemon(
    config: Path,
    *,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    binary: str = TUNNELKEEPER,
) -> Daemon:
    """``tunnelkeeper run -c config`` as a subprocess, up once /healthz answers. ``prefix`` (e.g.
    setpriv dropping capabilities) must exec the daemon, so the pid is the daemon's; ``binary``
    another tunnelkeeper than this checkout's (the start-up bench's installed copy)."""
    text = config.read_text()
    port = int(text.split('listen = "127.0.0.1:')[1].split('"')[0])
    log_path = config.parent / "daemon.log"
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [*(prefix or []), binary, "run", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    d = Daemon(proc, config, f"http://127.0.0.1:{port}", log_path)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode}: {d.output()[-3000:]}")
        return httpx.get(d.url + "/healthz", timeout=2).status_code == 200

    try:
        wait_until(up, timeout=20, what="daemon /healthz")
    except BaseException:
        stop_process(proc)
        raise
    return d


@dataclass
class Load:
    """Steady request load through the sim entry from a background thread."""

    sim: Sim
    tunnel: str
    rate_per_second: float = 20.0
    path: str = "/"
    results: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        interval = 1.0 / self.rate_per_second
        next_at = time.monotonic()
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.get(self.sim.http + self.path, headers={"Host": self.tunnel})
                    key = "ok" if 200 <= r.status_code < 300 else f"http_{r.status_code}"
                    if key != "ok":
                        self.failures.append(f"{time.time():.3f} {key} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                    self.failures.append(f"{time.time():.3f} {key}")
                self.results[key] += 1
                next_at += interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    @property
    def total(self) -> int:
        return sum(self.results.values())

    @property
    def failed(self) -> int:
        return self.total - self.results["ok"]

    def assert_only_cut_off(self, fault_at: float, within_seconds: float = 10.0) -> None:
        """Nothing failed but, at most, the one request in flight (the load sends one at a
        time) on connections a fault cut at ``fault_at`` (time.time()): the edge cannot retry
        a request it has already sent, on the real network as here."""
        assert self.failed <= 1, self.failures[:5]
        for failure in self.failures:
            at, _, text = failure.partition(" ")
            assert fault_at <= float(at) <= fault_at + within_seconds, failure
            assert "mid-request" in text or "http_5" in text, failure
