"""Fixtures for the fleet poller: a real `tunnelkeeper sim`, real `cloudflared-sim` connectors
started directly (stopped by pid), and a CloudflareAPI client pointed at the sim's API."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import CLOUDFLARED_SIM, Sim, start_sim, stop_process
from tests.waiting import free_port, wait_until
from tunnelkeeper.cloudflare.api import CloudflareAPI
from tunnelkeeper.config.model import FileSourceConfig, FleetConfig, TunnelConfig


@dataclass
class Connector:
    """One cloudflared-sim process serving a tunnel, as a replica on some host would."""

    proc: subprocess.Popen[bytes]
    metrics_port: int

    def ready(self) -> dict[str, Any]:
        r = httpx.get(f"http://127.0.0.1:{self.metrics_port}/ready", timeout=2)
        body: dict[str, Any] = r.json()
        return body

    def connector_id(self) -> str:
        return str(wait_until(lambda: self.ready().get("connectorId"), what="a connectorId"))

    def wait_connections(self, n: int) -> None:
        wait_until(
            lambda: self.ready().get("readyConnections", 0) >= n,
            timeout=20,
            what=f"{n} ready connections",
        )


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[Callable[..., Sim]]:
    started: list[Sim] = []

    def make(tunnels: list[str], *extra: str) -> Sim:
        sim = start_sim(
            tmp_path / f"sim{len(started)}", {name: "builtin" for name in tunnels}, *extra
        )
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def connector_factory() -> Iterator[Callable[[Sim, str], Connector]]:
    started: list[Connector] = []

    def make(sim: Sim, tunnel: str) -> Connector:
        port = free_port()
        argv = [
            CLOUDFLARED_SIM,
            "tunnel",
            "--no-autoupdate",
            "--metrics",
            f"127.0.0.1:{port}",
            "--output",
            "json",
            "--edge",
            sim.edge,
            "--grace-period",
            "1s",
            "run",
            "--token-file",
            str(sim.token_file(tunnel)),
        ]
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        connector = Connector(proc, port)
        started.append(connector)
        return connector

    yield make
    for connector in started:
        stop_process(connector.proc, timeout=10)


@pytest.fixture
async def api_factory() -> AsyncIterator[Callable[[Sim], CloudflareAPI]]:
    clients: list[CloudflareAPI] = []

    def make(sim: Sim) -> CloudflareAPI:
        client = CloudflareAPI(sim.api, sim.info["account_id"], sim.info["api_token"])
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def fleet_config(sim: Sim, tmp_path: Path, **over: Any) -> FleetConfig:
    token_file = tmp_path / "cf-api.token"
    token_file.write_text(sim.info["api_token"])
    return FleetConfig(
        account_id=sim.info["account_id"], api_token_file=token_file, api_url=sim.api, **over
    )


def tunnel_config(sim: Sim, name: str, expected: int | None = None) -> TunnelConfig:
    return TunnelConfig(
        name=name,
        token=FileSourceConfig(sim.token_file(name)),
        id=sim.info["tunnels"][name],
        expected_connectors=expected,
    )


class FakeClock:
    """An injectable monotonic policy clock that moves only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
