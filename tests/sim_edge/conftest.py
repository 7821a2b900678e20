"""Fixtures for the simulated edge/API/entry: `tunnelkeeper sim` and the origin as real processes.

`start_sim(tmp_path, ...)` is the approach to copy: start the process, wait (with a deadline)
for its ready file, stop it by PID (SIGTERM, wait, SIGKILL) in the finalizer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness import stop_process
from tests.waiting import wait_until

PYTHON = sys.executable


@dataclass
class Sim:
    """A running `tunnelkeeper sim`: the parsed ready file plus where its files are."""

    proc: subprocess.Popen[bytes]
    ready: dict[str, Any]
    token_dir: Path
    log_path: Path
    edge: str = field(init=False)
    api: str = field(init=False)
    http: str = field(init=False)
    account_id: str = field(init=False)
    api_token: str = field(init=False)
    tunnels: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.edge = self.ready["edge"]
        self.api = self.ready["api"]
        self.http = self.ready["http"]
        self.account_id = self.ready["account_id"]
        self.api_token = self.ready["api_token"]
        self.tunnels = self.ready["tunnels"]

    @property
    def tunnels_url(self) -> str:
        return f"{self.api}/accounts/{self.account_id}/cfd_tunnel"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_token}"}

    def token(self, name: str) -> str:
        return (self.token_dir / f"{name}.token").read_text().strip()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_sim(
    workdir: Path, tunnels: list[str] | None = None, extra: list[str] | None = None
) -> Sim:
    """Start `python -m tunnelkeeper sim` and wait for its ready file. Caller stops it."""
    workdir.mkdir(parents=True, exist_ok=True)
    token_dir = workdir / "tokens"
    ready_file = workdir / "ready.json"
    log_path = workdir / "sim.log"
    argv = [PYTHON, "-m", "tunnelkeeper", "sim"]
    for t in tunnels or ["portal=builtin"]:
        argv += ["--tunnel", t]
    argv += ["--token-dir", str(token_dir), "--ready-file", str(ready_file), *(extra or [])]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: ready_file.exists() or proc.poll() is not None,
            timeout=30,
            what="the sim's ready file",
        )
        if proc.poll() is not None:
            raise AssertionError(f"sim exited {proc.returncode}: {log_path.read_text()}")
        return Sim(proc, json.loads(ready_file.read_text()), token_dir, log_path)
    except BaseException:
        stop_process(proc)
        raise


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[Callable[..., Sim]]:
    """Start sims with custom tunnels/flags; all are stopped by PID at teardown."""
    started: list[Sim] = []

    def make(tunnels: list[str] | None = None, extra: list[str] | None = None) -> Sim:
        sim = start_sim(tmp_path / f"sim{len(started)}", tunnels, extra)
        started.append(sim)
        return sim

    yield make
    for sim in started:
        stop_process(sim.proc)


@pytest.fixture
def sim(sim_factory: Callable[..., Sim]) -> Sim:
    """A fresh sim with tunnels `portal` and `shop`, both served by the builtin origin."""
    return sim_factory(["portal=builtin", "shop=builtin"])


@pytest.fixture(scope="module")
def shared_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """One sim for a whole module; tests that use it create their own tunnels via the API."""
    sim = start_sim(tmp_path_factory.mktemp("shared-sim"), ["portal=builtin", "shop=builtin"])
    yield sim
    stop_process(sim.proc)


@dataclass
class Origin:
    proc: subprocess.Popen[bytes]
    url: str


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Origin]:
    """The builtin origin alone: `python -m tunnelkeeper.sim.origin --port 0 --port-file F`."""
    port_file = tmp_path / "origin.port"
    proc = subprocess.Popen(
        [PYTHON, "-m", "tunnelkeeper.sim.origin", "--port", "0", "--port-file", str(port_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_until(lambda: port_file.exists() or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, "origin exited"
        yield Origin(proc, f"http://127.0.0.1:{int(port_file.read_text())}")
    finally:
        stop_process(proc)


@pytest.fixture
async def fakes() -> Any:
    """Factory of protocol test clients (FakeConnector); all closed at teardown."""
    from tests.sim_edge.fakeconnector import FakeConnector

    made: list[FakeConnector] = []

    def make(edge: str, token: str, **kw: Any) -> FakeConnector:
        fake = FakeConnector(edge, token, **kw)
        made.append(fake)
        return fake

    yield make
    for fake in made:
        await fake.close()


CLOUDFLARED_SIM = str(Path(sys.executable).parent / "cloudflared-sim")


@dataclass
class Replica:
    """A real cloudflared-sim process connected to a sim's edge."""

    proc: subprocess.Popen[bytes]
    metrics: str
    log_path: Path

    def ready(self) -> dict[str, Any]:
        import httpx

        resp = httpx.get(f"{self.metrics}/ready", timeout=5)
        body = dict(resp.json())
        body["http_status"] = resp.status_code
        return body

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    """Start cloudflared-sim with a token (written to a 0600 file, never argv); stopped by PID."""
    from tests.waiting import free_port

    started: list[Replica] = []

    def start(sim: Sim, token: str, label: str = "") -> Replica:
        n = len(started)
        token_file = tmp_path / f"replica{n}.token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        port = free_port()
        log_path = tmp_path / f"replica{n}.log"
        argv = [CLOUDFLARED_SIM, "tunnel", "--no-autoupdate", "--metrics", f"127.0.0.1:{port}"]
        argv += ["--output", "json", "--edge", sim.edge, "--grace-period", "5s"]
        argv += ["--label", label] if label else []
        argv += ["run", "--token-file", str(token_file)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNEL_")}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        replica = Replica(proc, f"http://127.0.0.1:{port}", log_path)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        stop_process(replica.proc)
