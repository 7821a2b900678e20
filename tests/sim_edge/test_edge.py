"""The simulated edge: registration checks, connection bookkeeping, faults, rotation.

Connectors here are FakeConnector, a test client of the wire protocol, so a test can
send exactly the bad input it wants; test_cloudflared_sim.py uses real cloudflared-sim.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tests.sim_edge.conftest import Sim, stop_process
from tests.sim_edge.fakeconnector import FakeConnector
from tests.waiting import await_until
from tunnelkeeper.tunneltoken import TunnelToken

Fakes = Callable[..., FakeConnector]


async def api_get(sim: Sim, path: str, **params: Any) -> Any:
    async with httpx.AsyncClient(headers=sim.auth, timeout=10) as c:
        body = (await c.get(sim.tunnels_url + path, params=params)).json()
    assert body["success"], body
    return body["result"]


async def api_call(sim: Sim, method: str, path: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(headers=sim.auth, timeout=10) as c:
        return await c.request(method, sim.api + path, **kw)


async def sim_state(sim: Sim) -> dict[str, Any]:
    resp = await api_call(sim, "GET", "/sim/state")
    return dict(resp.json()["result"])


async def fault(sim: Sim, **body: Any) -> None:
    resp = await api_call(sim, "POST", "/sim/faults", json=body)
    assert resp.status_code == 200, resp.text


async def get_via_entry(sim: Sim, host: str, path: str = "/") -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as c:
        return await c.get(sim.http + path, headers={"Host": host})


def tunnel_path(sim: Sim, name: str) -> str:
    return f"/{sim.tunnels[name]}"


async def test_four_connections_over_two_colos_make_a_healthy_tunnel(
    sim: Sim, fakes: Fakes
) -> None:
    fake = fakes(sim.edge, sim.token("portal"), label="host-a")
    answers = await fake.open_all()
    assert [a["type"] for a in answers] == ["registered"] * 4
    assert {a["location"] for a in answers} == {"sim01", "sim02"}
    assert all(a["origin_url"] == sim.ready["origin"] for a in answers)

    connectors = await api_get(sim, tunnel_path(sim, "portal") + "/connections")
    assert [c["id"] for c in connectors] == [fake.connector_id]
    conns = connectors[0]["conns"]
    assert len(conns) == 4 and {c["colo_name"] for c in conns} == {"sim01", "sim02"}
    for conn, answer in zip(conns, answers, strict=True):
        assert conn["id"] == conn["uuid"] == answer["connection_id"]
        assert conn["client_id"] == fake.connector_id and conn["client_version"] == "2026.8.2"
        assert conn["origin_ip"] == "127.0.0.1" and conn["is_pending_reconnect"] is False
    one = await api_get(sim, tunnel_path(sim, "portal") + f"/connectors/{fake.connector_id}")
    assert one["id"] == fake.connector_id and len(one["conns"]) == 4
    tunnel = await api_get(sim, tunnel_path(sim, "portal"))
    assert tunnel["status"] == "healthy" and len(tunnel["connections"]) == 4
    assert tunnel["conns_active_at"] is not None and tunnel["conns_inactive_at"] is None
    state = await sim_state(sim)
    assert state["tunnels"]["portal"]["connectors"][fake.connector_id]["label"] == "host-a"


async def test_registration_checks_use_cloudflare_texts(sim: Sim, fakes: Fakes) -> None:
    good = TunnelToken.parse(sim.token("portal"))
    shop_id = sim.tunnels["shop"]
    resp = await api_call(sim, "DELETE", f"/accounts/{sim.account_id}/cfd_tunnel/{shop_id}")
    assert resp.status_code == 200
    failed_to_get = {
        "not base64": "%%%not-base64%%%",
        "base64 of non-JSON": base64.b64encode(b"hello").decode(),
        "unknown account": TunnelToken.build("f" * 32, good.tunnel_id, good.secret).reveal(),
        "unknown tunnel": TunnelToken.build(good.account_tag, str(uuid.uuid4()), b"x" * 32),
        "deleted tunnel": sim.token("shop"),
    }
    for why, token in failed_to_get.items():
        text = token.reveal() if isinstance(token, TunnelToken) else token
        answer = await fakes(sim.edge, text).open()
        assert answer == {"type": "error", "error": "Unauthorized: Failed to get tunnel"}, why
    wrong = TunnelToken.build(good.account_tag, good.tunnel_id, os.urandom(32)).reveal()
    answer = await fakes(sim.edge, wrong).open()
    assert answer == {"type": "error", "error": "Unauthorized: Invalid tunnel secret"}
    # None of that hurt anyone else, and no token reached the log.
    assert (await fakes(sim.edge, sim.token("portal")).open())["type"] == "registered"
    assert sim.token("portal") not in sim.log() and wrong not in sim.log()
    assert "registration_refused" in sim.log()


async def test_garbage_closes_only_the_sending_connection(sim: Sim, fakes: Fakes) -> None:
    bad_first = [
        b"\x00\x01binary",
        "not json",
        json.dumps([1, 2]),
        json.dumps({"type": "response", "id": 1}),
        json.dumps({"type": "register", "token": 5}),
        json.dumps({"type": "register", "token": "x", "connector_id": "nope", "conn_index": 0}),
        json.dumps(
            {"type": "register", "token": "x", "connector_id": str(uuid.uuid4()), "conn_index": 9}
        ),
    ]
    for message in bad_first:
        answer = await fakes(sim.edge, "").open(message=message)
        assert answer["type"] in ("error", "closed"), message
        if answer["type"] == "error":
            assert answer["error"].startswith("Bad request")

    fake = fakes(sim.edge, sim.token("portal"))
    await fake.open_all()
    await fake.send_raw(1, "{{{ garbage")
    await fake.send_raw(2, json.dumps({"type": "response", "id": "one"}))
    await await_until(
        lambda: _async_true(not fake.is_open(1) and not fake.is_open(2)), what="closed"
    )
    assert fake.is_open(0) and fake.is_open(3)
    state = (await sim_state(sim))["tunnels"]["portal"]
    conn = state["connectors"][fake.connector_id]
    assert (conn["live_connections"], conn["pending_connections"]) == (2, 2)
    assert state["status"] == "degraded"
    resp = await get_via_entry(sim, "portal")
    assert resp.status_code == 200 and resp.text.startswith("fake conn ")


async def _async_true(value: bool) -> bool:
    return value


async def test_disconnected_connections_stay_pending_then_disappear(
    sim_factory: Callable[..., Sim], fakes: Fakes
) -> None:
    sim = sim_factory(extra=["--pending-reconnect-seconds", "1"])
    fake = fakes(sim.edge, sim.token("portal"))
    await fake.open_all()
    await fake.close()

    async def gone() -> bool:
        return await api_get(sim, tunnel_path(sim, "portal") + "/connections") == []

    await await_until(gone, timeout=15, what="connector forgotten")
    tunnel = await api_get(sim, tunnel_path(sim, "portal"))
    assert tunnel["status"] == "down" and tunnel["conns_active_at"] is None
    assert tunnel["conns_inactive_at"] is not None


async def test_pending_reconnect_is_listed(sim: Sim, fakes: Fakes) -> None:
    a = fakes(sim.edge, sim.token("portal"), label="a")
    b = fakes(sim.edge, sim.token("portal"), label="b")
    await a.open_all()
    await b.open_all()
    await a.close()

    async def a_pending() -> bool:
        connectors = await api_get(sim, tunnel_path(sim, "portal") + "/connections")
        flags = {c["id"]: {x["is_pending_reconnect"] for x in c["conns"]} for c in connectors}
        return flags == {a.connector_id: {True}, b.connector_id: {False}}

    await await_until(a_pending, what="a's connections pending reconnect")
    assert (await api_get(sim, tunnel_path(sim, "portal")))["status"] == "degraded"
    resp = await get_via_entry(sim, "portal")
    assert resp.status_code == 200 and resp.headers["x-connector"] == "b"


async def test_cleanup_drops_one_connector_or_all(sim: Sim, fakes: Fakes) -> None:
    a = fakes(sim.edge, sim.token("portal"), label="a")
    b = fakes(sim.edge, sim.token("portal"), label="b")
    await a.open_all()
    await b.open_all()
    base = f"/accounts/{sim.account_id}/cfd_tunnel/{sim.tunnels['portal']}/connections"
    resp = await api_call(sim, "DELETE", base, params={"client_id": a.connector_id})
    assert resp.status_code == 200 and resp.json()["success"] is True
    await await_until(lambda: _async_true(len(a.closed) == 4), what="a's sockets closed")
    connectors = await api_get(sim, tunnel_path(sim, "portal") + "/connections")
    assert [c["id"] for c in connectors] == [b.connector_id]
    assert not b.closed

    resp = await api_call(sim, "DELETE", base, json={})
    assert resp.status_code == 200 and resp.json()["success"] is True
    await await_until(lambda: _async_true(len(b.closed) == 4), what="b's sockets closed")
    assert await api_get(sim, tunnel_path(sim, "portal") + "/connections") == []


async def test_secret_refresh_keeps_live_connections_and_refuses_old_token(
    sim: Sim, fakes: Fakes
) -> None:
    old_token = sim.token("portal")
    old = fakes(sim.edge, old_token, label="old")
    await old.open_all()
    secret = base64.b64encode(os.urandom(32)).decode()
    resp = await api_call(
        sim,
        "PATCH",
        f"/accounts/{sim.account_id}/cfd_tunnel/{sim.tunnels['portal']}",
        json={"tunnel_secret": secret},
    )
    new_token = resp.json()["result"]["token"]
    assert new_token != old_token

    for _ in range(4):  # the old connector keeps serving on its live connections
        resp = await get_via_entry(sim, "portal")
        assert resp.status_code == 200 and resp.headers["x-connector"] == "old"
    late = await fakes(sim.edge, old_token, label="late").open()
    assert late == {"type": "error", "error": "Unauthorized: Invalid tunnel secret"}
    new = fakes(sim.edge, new_token, label="new")
    assert {a["type"] for a in await new.open_all()} == {"registered"}

    state = (await sim_state(sim))["tunnels"]["portal"]
    assert state["secret_generation"] == 2
    gens = {c["label"]: c["secret_generation"] for c in state["connectors"].values()}
    assert gens == {"old": 1, "new": 2}
    assert secret not in sim.log() and new_token not in sim.log()


async def test_partition_blackholes_one_connector_until_heal(sim: Sim, fakes: Fakes) -> None:
    a = fakes(sim.edge, sim.token("portal"), label="a")
    b = fakes(sim.edge, sim.token("portal"), label="b")
    await a.open_all()
    await b.open_all()
    await fault(sim, action="partition", connector_id=a.connector_id)
    await await_until(lambda: _async_true(len(a.closed) == 4), what="a's sockets dropped")
    assert not b.closed
    state = (await sim_state(sim))["tunnels"]["portal"]["connectors"]
    assert state[a.connector_id]["live_connections"] == 0
    assert state[b.connector_id]["live_connections"] == 4

    attempt = await a.open_pending(0)
    await await_until(
        lambda: _async_true("registration_blackholed" in sim.log()), what="blackholed"
    )
    for _ in range(3):  # requests keep flowing through b
        resp = await get_via_entry(sim, "portal")
        assert resp.headers["x-connector"] == "b"
    assert not attempt.done()  # still no answer: the edge holds it
    await fault(sim, action="heal")
    assert (await asyncio.wait_for(attempt, 10)) == {"type": "closed"}
    assert (await a.open(0))["type"] == "registered"
    assert "fault_partition" in sim.log() and "fault_healed" in sim.log()


async def test_partition_all_then_heal(sim: Sim, fakes: Fakes) -> None:
    a = fakes(sim.edge, sim.token("portal"))
    await a.open_all()
    await fault(sim, action="partition", connector_id=None)
    await await_until(lambda: _async_true(len(a.closed) == 4), what="dropped")
    resp = await get_via_entry(sim, "portal")
    assert resp.status_code == 502 and "1033" in resp.text
    newcomer = fakes(sim.edge, sim.token("shop"))
    attempt = await newcomer.open_pending(0)
    await await_until(
        lambda: _async_true("registration_blackholed" in sim.log()), what="held by the edge"
    )
    assert not attempt.done()
    await fault(sim, action="heal")
    assert (await asyncio.wait_for(attempt, 10)) == {"type": "closed"}
    assert (await newcomer.open(0))["type"] == "registered"


async def test_refuse_registrations_keeps_live_connections(sim: Sim, fakes: Fakes) -> None:
    live = fakes(sim.edge, sim.token("portal"), label="live")
    await live.open_all()
    await fault(sim, action="refuse_registrations", tunnel="portal")
    answer = await fakes(sim.edge, sim.token("portal")).open()
    assert answer["type"] == "error"
    assert (await fakes(sim.edge, sim.token("shop")).open())["type"] == "registered"
    resp = await get_via_entry(sim, "portal")
    assert resp.status_code == 200 and resp.headers["x-connector"] == "live"
    await fault(sim, action="heal")
    assert (await fakes(sim.edge, sim.token("portal")).open())["type"] == "registered"


async def test_bad_fault_requests_are_400(sim: Sim) -> None:
    for body in (
        {"action": "explode"},
        {"action": "partition"},
        {"action": "refuse_registrations"},
    ):
        resp = await api_call(sim, "POST", "/sim/faults", json=body)
        assert resp.status_code == 400 and resp.json()["success"] is False
    resp = await api_call(sim, "POST", "/sim/faults", content=b"nope")
    assert resp.status_code == 400
    async with httpx.AsyncClient(timeout=10) as c:
        resp = await c.post(sim.api + "/sim/faults", json={"action": "heal"})
    assert resp.status_code == 401


async def test_sigterm_stops_the_sim_cleanly_with_connectors_attached(
    sim_factory: Callable[..., Sim], fakes: Fakes
) -> None:
    sim = sim_factory()
    fake = fakes(sim.edge, sim.token("portal"))
    await fake.open_all()
    code = await asyncio.to_thread(stop_process, sim.proc)
    assert code == 0
    await await_until(lambda: _async_true(len(fake.closed) == 4), what="sockets closed")
    log = sim.log()
    assert "sim_stopping" in log and "Traceback" not in log
