"""cloudflared-sim against a scripted edge (a line server in the test, speaking the link of
tunnelkeeper/sim/lineconn.py by hand) for the protocol corners the real simulated edge does not
hit on demand: hostile messages, a request arriving after `unregister`, a registration never
answered, an `error` reply, a silent peer."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.sim_cloudflared.conftest import CfProc, Spawn
from tests.waiting import await_until

PING = b'{"type":"ping"}'
PONG = b'{"type":"pong"}'


class RawLink:
    """The edge's end of one link, driven by the test. A reader task answers the connector's
    pings at once (``autoping``), or never, like a dead network path."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, autoping: bool
    ) -> None:
        self.writer = writer
        self.lines: asyncio.Queue[bytes] = asyncio.Queue()
        self._task = asyncio.create_task(self._read(reader, autoping))

    async def _read(self, reader: asyncio.StreamReader, autoping: bool) -> None:
        while line := await reader.readline():
            if line.rstrip(b"\n") == PING:
                if autoping:
                    self.writer.write(PONG + b"\n")
                continue
            await self.lines.put(line.rstrip(b"\n"))
        await self.lines.put(b"")

    async def receive_str(self) -> str:
        line = await self.lines.get()
        if not line:
            raise ConnectionError("closed by the connector")
        return line.decode()

    async def send_str(self, text: str) -> None:
        self.send_bytes(text.encode())

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data + b"\n")

    async def close(self) -> None:
        self.writer.close()
        self._task.cancel()


class FakeEdge:
    def __init__(self) -> None:
        self.sockets: asyncio.Queue[RawLink] = asyncio.Queue()
        self.release_slow = asyncio.Event()
        self._links: list[RawLink] = []
        self.addr = ""  # the link listener (--edge)
        self.origin = ""  # the aiohttp app's origin routes
        self.autoping = True

    async def connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = RawLink(reader, writer, self.autoping)
        self._links.append(link)
        await self.sockets.put(link)

    async def slow(self, request: web.Request) -> web.Response:
        await self.release_slow.wait()
        return web.Response(text="slow done")

    async def ok(self, request: web.Request) -> web.Response:
        return web.Response(text=f"ok {request.headers.get('X-A', '')}")

    async def next_socket(self, timeout: float = 15.0) -> RawLink:
        return await asyncio.wait_for(self.sockets.get(), timeout)

    async def finish(self) -> None:
        for link in self._links:
            await link.close()


@pytest.fixture
async def edge() -> AsyncIterator[FakeEdge]:
    fake = FakeEdge()
    app = web.Application()
    app.router.add_get("/origin/slow", fake.slow)
    app.router.add_get("/origin/ok", fake.ok)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.origin = f"http://127.0.0.1:{runner.addresses[0][1]}"
    links = await asyncio.start_server(fake.connect, "127.0.0.1", 0, limit=32 * 1024 * 1024)
    fake.addr = f"127.0.0.1:{links.sockets[0].getsockname()[1]}"
    yield fake
    links.close()
    await fake.finish()
    fake.release_slow.set()
    await runner.cleanup()


def _start(spawn: Spawn, edge: FakeEdge, token_file: Path, *extra: str) -> CfProc:
    return spawn(
        [
            "tunnel",
            "--edge",
            edge.addr,
            "--output",
            "json",
            "--ha-connections",
            "1",
            "--retries",
            "1",
            *extra,
            "run",
            "--token-file",
            str(token_file),
        ]
    )


async def _metric(cf: CfProc, name: str) -> float | None:
    async with httpx.AsyncClient() as client:
        text = (await client.get(cf.url("/metrics"), timeout=5)).text
    values = [
        float(ln.rpartition(" ")[2])
        for ln in text.splitlines()
        if ln.startswith(name + " ") or ln.startswith(name + "{")
    ]
    return sum(values) if values else None


async def _record(cf: CfProc, prefix: str, timeout: float = 15.0) -> dict[str, Any]:
    async def find() -> dict[str, Any] | None:
        return next((r for r in cf.records() if str(r["message"]).startswith(prefix)), None)

    return await await_until(find, timeout=timeout, what=prefix)


def _registered(edge: FakeEdge, conn: str = "c0") -> dict[str, Any]:
    return {
        "type": "registered",
        "connection_id": conn,
        "location": "fake01",
        "ip": "127.0.0.1",
        "origin_url": edge.origin,
    }


async def _receive_until(ws: RawLink, want: set[Any]) -> dict[Any, dict[str, Any]]:
    """Read messages until one for every id (or type) in want has arrived."""
    got: dict[Any, dict[str, Any]] = {}
    while not want <= set(got):
        msg = json.loads(await asyncio.wait_for(ws.receive_str(), 15))
        got[msg.get("id", msg["type"])] = msg
    return got


async def test_hostile_messages_and_requests_after_unregister(
    spawn: Spawn, edge: FakeEdge, token_file: Path
) -> None:
    cf = _start(spawn, edge, token_file, "--grace-period", "30s")
    ws = await edge.next_socket()
    hello = json.loads(await ws.receive_str())
    assert hello["type"] == "register" and hello["conn_index"] == 0
    assert hello["token"] == token_file.read_text().strip()
    await ws.send_str(json.dumps(_registered(edge)))
    await _record(cf, "Registered tunnel connection")
    for junk in ("not json", "[1,2]", '{"type":"bogus"}', '{"type":"request"}', "x" * 100_000):
        await ws.send_str(junk)
    ws.send_bytes(b"\xff\x00binary")
    request = {"type": "request", "method": "GET", "headers": [["X-A", "1"]], "body": ""}
    await ws.send_str(json.dumps({**request, "id": 1, "path": "/origin/ok"}))
    await ws.send_str(json.dumps({**request, "id": 2, "path": "no-slash"}))
    await ws.send_str(json.dumps({**request, "id": 3, "path": "/origin/slow"}))
    got = await _receive_until(ws, {1, 2})
    assert got[1]["type"] == "response" and got[1]["status"] == 200
    assert got[2]["type"] == "origin_error"
    await await_until(lambda: _metric(cf, "cloudflared_tunnel_concurrent_requests_per_tunnel"))
    cf.proc.send_signal(signal.SIGTERM)
    assert "unregister" in await _receive_until(ws, {"unregister"})
    await ws.send_str(json.dumps({**request, "id": 4, "path": "/origin/ok"}))
    assert (await _receive_until(ws, {4}))[4] == {"type": "refused", "id": 4}
    edge.release_slow.set()
    got = await _receive_until(ws, {3})
    assert got[3]["status"] == 200  # the in-flight request finished during the drain
    await await_until(lambda: _exited(cf), timeout=20, what="exit")
    assert cf.proc.returncode == 0
    assert "Ignoring malformed message from edge" in cf.messages()


async def _exited(cf: CfProc) -> bool:
    return cf.proc.poll() is not None


async def test_unanswered_registration_times_out_and_backs_off(
    spawn: Spawn, edge: FakeEdge, token_file: Path
) -> None:
    cf = _start(spawn, edge, token_file)
    ws = await edge.next_socket()
    assert json.loads(await ws.receive_str())["type"] == "register"  # ...and never answer
    assert await _metric(cf, "cloudflared_tunnel_ha_connections") == 1
    rec = await _record(cf, "Serve tunnel error", timeout=20)
    assert rec["error"] == "register tunnel: context deadline exceeded"
    assert (await _record(cf, "Retrying connection in up to"))["message"].endswith(" 2s")
    await edge.next_socket(timeout=20)  # it tries again


async def test_error_reply_is_a_server_side_register_error(
    spawn: Spawn, edge: FakeEdge, token_file: Path
) -> None:
    cf = _start(spawn, edge, token_file)
    for _ in range(2):  # refused, retried after the backoff, refused again
        ws = await edge.next_socket(timeout=20)
        await ws.receive_str()
        await ws.send_str(
            json.dumps({"type": "error", "error": "Unauthorized: Failed to get tunnel"})
        )
        await ws.close()
    rec = await _record(cf, "Register tunnel error from server side")
    assert rec["error"] == "Unauthorized: Failed to get tunnel"
    assert await _metric(cf, "cloudflared_tunnel_tunnel_register_fail") == 2
    async with httpx.AsyncClient() as client:
        assert (await client.get(cf.url("/ready"))).status_code == 503


async def test_never_connect_fault_never_dials(
    spawn: Spawn, edge: FakeEdge, token_file: Path
) -> None:
    broken = spawn(
        ["tunnel", "--edge", edge.addr, "--output", "json", "run", "--token-file", str(token_file)],
        env={"CLOUDFLARED_SIM_FAULT": "never-connect"},
    )
    await _record(broken, "Starting metrics server on")
    healthy = _start(spawn, edge, token_file)
    ws = await edge.next_socket()
    hello = json.loads(await ws.receive_str())
    async with httpx.AsyncClient() as client:
        body = (await client.get(healthy.url("/ready"))).json()
        assert hello["connector_id"] == body["connectorId"]  # the first dial is the healthy one
        assert (await client.get(broken.url("/ready"))).status_code == 503
    assert edge.sockets.empty()
    assert await _metric(broken, "cloudflared_tunnel_ha_connections") == 1


async def test_silent_edge_after_registration_is_an_idle_timeout(
    spawn: Spawn, edge: FakeEdge, token_file: Path
) -> None:
    edge.autoping = False  # pings from the connector go unanswered, like a dead network path
    cf = _start(spawn, edge, token_file)
    ws = await edge.next_socket()
    await ws.receive_str()
    await ws.send_str(json.dumps(_registered(edge)))
    await _record(cf, "Registered tunnel connection")
    rec = await _record(cf, "Serve tunnel error", timeout=30)
    assert rec["error"] == "timeout: no recent network activity"
    assert "Connection terminated" in cf.messages()
    async with httpx.AsyncClient() as client:
        assert (await client.get(cf.url("/ready"))).status_code == 503
    await edge.next_socket(timeout=20)  # and it reconnects after the backoff
