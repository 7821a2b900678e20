"""The simulated edge with real cloudflared-sim replicas: what an operator would observe."""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable
from typing import Any

import httpx

from tests.sim_edge.conftest import Replica, Sim
from tests.waiting import wait_until

Replicas = Callable[..., Replica]


def ready_connections(replica: Replica) -> int:
    try:
        return int(replica.ready()["readyConnections"])
    except (httpx.HTTPError, ValueError, KeyError):
        return -1


def wait_ready(replica: Replica, at_least: int = 1, timeout: float = 40) -> dict[str, Any]:
    wait_until(lambda: ready_connections(replica) >= at_least, timeout=timeout, what="ready")
    return replica.ready()


def sim_state(sim: Sim) -> dict[str, Any]:
    resp = httpx.get(sim.api + "/sim/state", headers=sim.auth, timeout=10)
    return dict(resp.json()["result"])


def connector(sim: Sim, connector_id: str) -> dict[str, Any]:
    return dict(sim_state(sim)["tunnels"]["portal"]["connectors"].get(connector_id) or {})


def fault(sim: Sim, **body: Any) -> None:
    resp = httpx.post(sim.api + "/sim/faults", json=body, headers=sim.auth, timeout=10)
    assert resp.status_code == 200, resp.text


def get(sim: Sim, path: str = "/") -> httpx.Response:
    return httpx.get(sim.http + path, headers={"Host": "portal"}, timeout=30)


def test_request_through_a_replica_reaches_the_origin(sim: Sim, replicas: Replicas) -> None:
    replica = replicas(sim, sim.token("portal"), label="host-a")
    ready = wait_ready(replica, at_least=4)
    assert ready["http_status"] == 200
    resp = get(sim)
    assert resp.status_code == 200 and "tunnel portal" in resp.text
    echo = httpx.post(
        sim.http + "/echo?k=v", content=b"body", headers={"Host": "portal"}, timeout=30
    ).json()
    assert (echo["method"], echo["path"], echo["body"]) == ("POST", "/echo?k=v", "body")
    api = httpx.get(
        f"{sim.tunnels_url}/{sim.tunnels['portal']}/connections", headers=sim.auth, timeout=10
    ).json()["result"]
    assert [c["id"] for c in api] == [ready["connectorId"]]
    assert {c["colo_name"] for c in api[0]["conns"]} == {"sim01", "sim02"}
    state = connector(sim, ready["connectorId"])
    assert state["label"] == "host-a" and state["requests_served"] == 2


def test_partition_makes_the_replica_unready_and_heal_brings_it_back(
    sim: Sim, replicas: Replicas
) -> None:
    replica = replicas(sim, sim.token("portal"))
    connector_id = wait_ready(replica)["connectorId"]
    fault(sim, action="partition", connector_id=connector_id)
    wait_until(lambda: replica.ready()["http_status"] == 503, timeout=20, what="/ready 503")
    assert replica.ready()["readyConnections"] == 0
    assert get(sim).status_code == 502
    fault(sim, action="heal")
    wait_ready(replica, at_least=1, timeout=60)
    wait_until(lambda: get(sim).status_code == 200, timeout=10, what="served again")


def test_secret_refresh_old_replica_serves_old_token_refused_new_token_registers(
    sim: Sim, replicas: Replicas
) -> None:
    old_token = sim.token("portal")
    old = replicas(sim, old_token, label="old")
    old_id = wait_ready(old, at_least=4)["connectorId"]
    secret = base64.b64encode(os.urandom(32)).decode()
    patched = httpx.patch(
        f"{sim.tunnels_url}/{sim.tunnels['portal']}",
        json={"tunnel_secret": secret},
        headers=sim.auth,
        timeout=10,
    ).json()
    new_token = patched["result"]["token"]

    assert [get(sim).status_code for _ in range(3)] == [200] * 3  # old one keeps serving
    assert connector(sim, old_id)["requests_served"] == 3

    late = replicas(sim, old_token, label="late")
    wait_until(
        lambda: "Unauthorized: Invalid tunnel secret" in late.log(), timeout=20, what="refusal"
    )
    assert late.ready()["http_status"] == 503

    new = replicas(sim, new_token, label="new")
    new_id = wait_ready(new)["connectorId"]
    gens = {
        c["label"]: c["secret_generation"]
        for c in sim_state(sim)["tunnels"]["portal"]["connectors"].values()
    }
    assert gens == {"old": 1, "new": 2}
    assert connector(sim, new_id)["live_connections"] >= 1


def test_draining_replica_gets_no_new_requests_and_finishes_in_flight(
    sim: Sim, replicas: Replicas
) -> None:
    a = replicas(sim, sim.token("portal"), label="a")
    a_id = wait_ready(a, at_least=4)["connectorId"]
    slow: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: slow.update(r=get(sim, "/slow?seconds=3")))
    thread.start()  # lands on a: it is the only connector
    try:
        b = replicas(sim, sim.token("portal"), label="b")
        b_id = wait_ready(b, at_least=1)["connectorId"]
        a.proc.terminate()  # SIGTERM: a unregisters and drains within its grace period
        wait_until(
            lambda: (
                connector(sim, a_id).get("draining_connections", 0) >= 1
                or a.proc.poll() is not None
            ),
            timeout=10,
            what="a draining",
        )
        replies = [get(sim) for _ in range(6)]
        assert [r.status_code for r in replies] == [200] * 6
        assert connector(sim, b_id)["requests_served"] == 6
        # a served nothing new; its count may include the slow request, which it finishes
        # meanwhile (on a loaded machine the six fast ones can take longer than its 3 s)
        assert connector(sim, a_id).get("requests_served", 0) <= 1
    finally:
        thread.join(timeout=30)
    assert slow["r"].status_code == 200 and slow["r"].text.startswith("slept 3s")
    assert a.proc.wait(timeout=20) == 0  # drained, then exited on its own
