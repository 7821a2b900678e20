"""The public HTTP entry: Host → tunnel → one connector → origin, with Cloudflare's retries."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from tests.sim_edge.conftest import Origin, Sim
from tests.sim_edge.fakeconnector import (
    CLOSE,
    HOLD,
    ORIGIN_ERROR,
    PROXY,
    REFUSE,
    FakeConnector,
)
from tests.waiting import await_until

Fakes = Callable[..., FakeConnector]


async def entry(sim: Sim, host: str, path: str = "/", **kw: Any) -> httpx.Response:
    method = kw.pop("method", "GET")
    async with httpx.AsyncClient(timeout=30) as c:
        return await c.request(method, sim.http + path, headers={"Host": host}, **kw)


async def served(sim: Sim) -> dict[str, int]:
    async with httpx.AsyncClient(headers=sim.auth, timeout=10) as c:
        state = (await c.get(sim.api + "/sim/state")).json()["result"]
    connectors = state["tunnels"]["portal"]["connectors"].values()
    return {c["label"]: c["requests_served"] for c in connectors}


async def test_requests_spread_over_connectors(sim: Sim, fakes: Fakes) -> None:
    a = fakes(sim.edge, sim.token("portal"), label="a")
    b = fakes(sim.edge, sim.token("portal"), label="b")
    await a.open_all()
    await b.open_all()
    replies = [await entry(sim, "PORTAL:8443", f"/n/{i}") for i in range(20)]
    assert {r.status_code for r in replies} == {200}
    by = Counter(r.headers["x-connector"] for r in replies)
    assert by["a"] >= 5 and by["b"] >= 5 and by.total() == 20
    assert await served(sim) == dict(by)
    assert {r["path"] for r in a.requests + b.requests} == {f"/n/{i}" for i in range(20)}


async def test_draining_connector_gets_no_new_requests(sim: Sim, fakes: Fakes) -> None:
    a = fakes(sim.edge, sim.token("portal"), label="a")
    b = fakes(sim.edge, sim.token("portal"), label="b")
    await a.open_all()
    a.mode = HOLD
    in_flight = asyncio.create_task(entry(sim, "portal", "/long"))
    await await_until(lambda: _true(bool(a.requests)), what="a request held by a")
    await b.open_all()
    await a.unregister()
    await await_until(lambda: _draining(sim, "a"), what="a's connections draining", timeout=10)
    before = len(a.requests)
    replies = [await entry(sim, "portal") for _ in range(10)]
    assert {r.headers["x-connector"] for r in replies} == {"b"}
    assert len(a.requests) == before
    assert not in_flight.done()  # a is draining, not dead: the held request is still open
    in_flight.cancel()
    await asyncio.gather(in_flight, return_exceptions=True)


async def _true(value: bool) -> bool:
    return value


async def _draining(sim: Sim, label: str) -> bool:
    async with httpx.AsyncClient(headers=sim.auth, timeout=10) as c:
        state = (await c.get(sim.api + "/sim/state")).json()["result"]
    for conn in state["tunnels"]["portal"]["connectors"].values():
        if conn["label"] == label:
            return bool(conn["draining_connections"] == 4)
    return False


async def test_refused_request_is_retried_on_another_connector(sim: Sim, fakes: Fakes) -> None:
    a = fakes(sim.edge, sim.token("portal"), label="a")
    b = fakes(sim.edge, sim.token("portal"), label="b")
    await a.open_all()
    await b.open_all()
    a.mode = REFUSE
    replies = [await entry(sim, "portal") for _ in range(8)]
    assert [r.status_code for r in replies] == [200] * 8
    assert {r.headers["x-connector"] for r in replies} == {"b"}
    assert a.requests, "the round-robin must have tried a at least once"


async def test_lost_after_sending_is_502_and_no_connector_is_1033(sim: Sim, fakes: Fakes) -> None:
    a = fakes(sim.edge, sim.token("portal"), label="a")
    await a.open(0)
    a.mode = CLOSE
    resp = await entry(sim, "portal")
    assert resp.status_code == 502 and "error code: 502" in resp.text
    assert len(a.requests) == 1  # not retried: the request had been sent
    resp = await entry(sim, "portal")
    assert resp.status_code == 502
    assert "error code: 1033" in resp.text and "portal" in resp.text


async def test_origin_error_is_502(sim: Sim, fakes: Fakes) -> None:
    a = fakes(sim.edge, sim.token("portal"))
    await a.open(0)
    a.mode = ORIGIN_ERROR
    resp = await entry(sim, "portal")
    assert resp.status_code == 502 and "error code: 502" in resp.text


async def test_unknown_host_and_oversized_body(sim: Sim, fakes: Fakes) -> None:
    resp = await entry(sim, "nosuch.example")
    assert resp.status_code == 404 and "nosuch.example" in resp.text
    a = fakes(sim.edge, sim.token("portal"))
    await a.open(0)
    resp = await entry(sim, "portal", "/upload", method="POST", content=b"x" * (13 * 1024 * 1024))
    assert resp.status_code == 413 and a.requests == []
    assert (await entry(sim, "portal")).status_code == 200


async def test_builtin_origin_through_the_tunnel(sim: Sim, fakes: Fakes) -> None:
    a = fakes(sim.edge, sim.token("portal"))
    await a.open(0)
    a.mode = PROXY
    hello = await entry(sim, "portal")
    assert hello.status_code == 200 and "tunnel portal" in hello.text
    echo = await entry(sim, "portal", "/echo?x=1", method="PUT", content=b"payload")
    body = echo.json()
    assert (body["method"], body["path"], body["body"]) == ("PUT", "/echo?x=1", "payload")
    headers = {k.lower(): v for k, v in body["headers"]}
    assert headers["x-forwarded-host"] == "portal" and "cf-connecting-ip" in headers
    teapot = await entry(sim, "portal", "/status/418")
    assert teapot.status_code == 418


async def test_hostile_connector_replies_do_not_break_the_entry(sim: Sim, fakes: Fakes) -> None:
    a = fakes(sim.edge, sim.token("portal"))
    await a.open(0)
    a.mode = "hold"
    task = asyncio.create_task(entry(sim, "portal"))
    await await_until(lambda: _true(bool(a.requests)), what="request at the connector")
    rid = a.requests[0]["id"]
    bad = {
        "type": "response",
        "id": rid,
        "status": 200,
        "headers": [["X-Ok", "yes"], ["X-Bad\r\nInjected", "1"], ["X-Split", "a\r\nb: c"]],
        "body": base64.b64encode(b"fine").decode(),
    }
    await a.send_raw(0, json.dumps(bad))
    resp = await task
    assert resp.status_code == 200 and resp.text == "fine" and resp.headers["x-ok"] == "yes"
    assert "x-split" not in resp.headers and "injected" not in str(resp.headers).lower()

    task = asyncio.create_task(entry(sim, "portal"))
    await await_until(lambda: _true(len(a.requests) == 2), what="second request")
    rid = a.requests[1]["id"]
    await a.send_raw(0, json.dumps({"type": "response", "id": rid, "status": 99999}))
    assert (await task).status_code == 502


async def test_entry_with_an_external_origin(
    sim_factory: Callable[..., Sim], origin: Origin, fakes: Fakes
) -> None:
    sim = sim_factory([f"portal={origin.url}"])
    a = fakes(sim.edge, sim.token("portal"))
    assert (await a.open(0))["origin_url"] == origin.url
    a.mode = PROXY
    resp = await entry(sim, "portal", "/slow?seconds=0.05")
    assert resp.status_code == 200 and resp.text.startswith("slept")
