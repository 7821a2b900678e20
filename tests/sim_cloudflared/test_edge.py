"""cloudflared-sim against the simulated edge (`tunnelkeeper sim`): HA, proxying, faults, drain."""

from __future__ import annotations

import base64
import os
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.sim_cloudflared.conftest import CfProc, Sim, Spawn, run_once
from tests.waiting import wait_until


def _start(
    spawn: Spawn, sim: Sim, tunnel: str, *extra: str, env: dict[str, str] | None = None
) -> CfProc:
    return spawn(
        [
            "tunnel",
            "--no-autoupdate",
            "--edge",
            sim.edge,
            "--output",
            "json",
            "--retries",
            "1",
            *extra,
            "run",
            "--token-file",
            str(sim.token_path(tunnel)),
        ],
        env=env,
    )


def _get(sim: Sim, tunnel: str, path: str, timeout: float = 30.0) -> httpx.Response:
    return httpx.get(f"{sim.http}{path}", headers={"Host": tunnel}, timeout=timeout)


def test_four_connections_register_in_order(spawn: Spawn, sim: Sim, tmp_path: Path) -> None:
    pidfile = tmp_path / "cf.pid"
    cf = _start(spawn, sim, "portal", "--pidfile", str(pidfile))
    body = cf.wait_ready(connections=4)
    regs = [r for r in cf.records() if r["message"] == "Registered tunnel connection"]
    assert [r["connIndex"] for r in regs] == [0, 1, 2, 3]
    for r in regs:
        assert r["protocol"] == "quic" and r["event"] == 0 and r["ip"] == "127.0.0.1"
        assert r["location"] in ("sim01", "sim02") and r["connection"]
    assert body["status"] == 200
    # /diag/tunnel: only connected entries, Go omitempty drops index 0's "index".
    conns = cf.get("/diag/tunnel").json()["connections"]
    assert conns[0] == {"isConnected": True, "protocol": 1, "edgeAddress": "127.0.0.1"}
    assert [c.get("index") for c in conns[1:]] == [1, 2, 3]
    assert cf.metric("cloudflared_tunnel_ha_connections") == 4
    assert cf.metric("cloudflared_tunnel_tunnel_register_success") == 4
    assert cf.metric("cloudflared_tunnel_server_locations") == 4
    # The edge sees this replica under the same connector id.
    tunnel_id = sim.ready["tunnels"]["portal"]
    acct = sim.ready["account_id"]
    api_conns = sim.api("GET", f"/accounts/{acct}/cfd_tunnel/{tunnel_id}/connections")
    assert body["connectorId"] in [c["id"] for c in api_conns]
    # pidfile: decimal pid without newline, after registration, left behind at exit.
    wait_until(pidfile.exists, what="pidfile")
    assert pidfile.read_text() == str(cf.pid)
    assert run_once(["tunnel", "--metrics", str(cf.metrics), "ready"], tmp_path).returncode == 0
    assert cf.stop() == 0
    assert pidfile.read_text() == str(cf.pid)


def test_requests_are_proxied_to_the_origin(spawn: Spawn, sim: Sim) -> None:
    cf = _start(spawn, sim, "portal")
    cf.wait_ready(connections=1)
    r = _get(sim, "portal", "/echo?x=1")
    assert r.status_code == 200
    echo = r.json()
    assert echo["path"] == "/echo?x=1" and echo["method"] == "GET"
    posted = httpx.post(
        f"{sim.http}/echo",
        headers={"Host": "portal", "X-Test": "yes"},
        content=b"\x00payload",
        timeout=30,
    ).json()
    assert base64.b64decode(posted["body_base64"]) == b"\x00payload"
    assert ["X-Test", "yes"] in posted["headers"]
    assert _get(sim, "portal", "/status/418").status_code == 418
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda i: _get(sim, "portal", f"/echo?i={i}"), range(32)))
    assert [r.status_code for r in results] == [200] * 32
    assert cf.metric("cloudflared_tunnel_total_requests") == 35
    assert cf.metric("cloudflared_tunnel_response_by_code") == 35


def test_unreachable_origin_is_an_origin_error(spawn: Spawn, sim: Sim) -> None:
    cf = _start(spawn, sim, "dead")
    cf.wait_ready(connections=1)
    assert _get(sim, "dead", "/").status_code == 502
    assert cf.metric("cloudflared_tunnel_request_errors") == 1


def test_partition_keeps_ha_connections_nonzero_while_not_ready(spawn: Spawn, sim: Sim) -> None:
    cf = _start(spawn, sim, "partition")
    connector_id = cf.wait_ready(connections=4)["connectorId"]
    sim.fault("partition", connector_id=connector_id)
    try:
        wait_until(lambda: cf.ready()[0] == 503, what="/ready 503 during the partition")
        readings = []
        for _ in range(5):
            status, body = cf.ready()
            readings.append(
                (status, body["readyConnections"], cf.metric("cloudflared_tunnel_ha_connections"))
            )
        assert all(s == 503 and n == 0 and (ha or 0) >= 1 for s, n, ha in readings), readings
        assert "Serve tunnel error" in cf.messages()
        cf.wait_record("Retrying connection in up to 2s")  # --retries 1 caps at 2^1 s
    finally:
        sim.fault("heal")
    cf.wait_ready(connections=4, timeout=40)


def test_rotated_secret_is_refused_but_live_connections_stay(
    spawn: Spawn, sim: Sim, tmp_path: Path
) -> None:
    old = tmp_path / "old.token"
    old.write_text(sim.token_path("rotated").read_text())
    live = _start(spawn, sim, "rotated")
    live.wait_ready(connections=4)
    tunnel_id = sim.ready["tunnels"]["rotated"]
    acct = sim.ready["account_id"]
    secret = base64.b64encode(os.urandom(32)).decode()
    sim.api("PATCH", f"/accounts/{acct}/cfd_tunnel/{tunnel_id}", {"tunnel_secret": secret})
    late = spawn(
        [
            "tunnel",
            "--edge",
            sim.edge,
            "--output",
            "json",
            "--retries",
            "1",
            "run",
            "--token-file",
            str(old),
        ]
    )
    rec = late.wait_record("Register tunnel error from server side")
    assert rec["error"] == "Unauthorized: Invalid tunnel secret" and rec["connIndex"] == 0
    late.wait_record("Retrying connection in up to")
    assert late.ready()[0] == 503
    assert (late.metric("cloudflared_tunnel_tunnel_register_fail") or 0) >= 1
    assert 'error="server_error",rpcName="registerConnection"' in late.get("/metrics").text
    status, body = live.ready()
    assert (status, body["readyConnections"]) == (200, 4)


def _slow_request(sim: Sim, seconds: float) -> Future[httpx.Response]:
    fut: Future[httpx.Response] = Future()

    def go() -> None:
        try:
            fut.set_result(_get(sim, "drain", f"/slow?seconds={seconds}", timeout=60))
        except Exception as exc:
            fut.set_exception(exc)

    threading.Thread(target=go, daemon=True).start()
    return fut


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(spawn: Spawn, sim: Sim) -> None:
    old = _start(spawn, sim, "drain", "--grace-period", "30s")
    old.wait_ready(connections=1)
    slow = _slow_request(sim, 3)
    wait_until(lambda: old.metric("cloudflared_tunnel_concurrent_requests_per_tunnel") == 1)
    new = _start(spawn, sim, "drain")
    new.wait_ready(connections=1)
    old.proc.send_signal(signal.SIGTERM)
    old.wait_record("Initiating graceful shutdown due to signal terminated")
    # While draining: the metrics server still answers and new requests go elsewhere.
    assert old.get("/healthcheck").text == "OK\n"
    for i in range(5):
        assert _get(sim, "drain", f"/echo?during-drain={i}").status_code == 200
    assert old.metric("cloudflared_tunnel_total_requests") == 1
    assert slow.result(timeout=30).status_code == 200
    assert old.wait_exit() == 0
    msgs = old.messages()
    assert msgs.index("Tunnel server stopped") < msgs.index("Metrics server stopped")


def test_second_sigterm_during_drain_kills_at_once(spawn: Spawn, sim: Sim) -> None:
    cf = _start(spawn, sim, "drain", "--grace-period", "2m")
    cf.wait_ready(connections=1)
    slow = _slow_request(sim, 40)
    wait_until(lambda: cf.metric("cloudflared_tunnel_concurrent_requests_per_tunnel") == 1)
    cf.proc.send_signal(signal.SIGTERM)
    cf.wait_record("Initiating graceful shutdown")
    cf.proc.send_signal(signal.SIGTERM)
    assert cf.wait_exit(timeout=15) == -signal.SIGTERM
    assert "Tunnel server stopped" not in cf.messages()
    assert slow.result(timeout=30).status_code == 502


def test_grace_period_bounds_the_drain(spawn: Spawn, sim: Sim) -> None:
    cf = _start(spawn, sim, "drain", "--grace-period", "1s")
    cf.wait_ready(connections=1)
    slow = _slow_request(sim, 40)
    wait_until(lambda: cf.metric("cloudflared_tunnel_concurrent_requests_per_tunnel") == 1)
    cf.proc.send_signal(signal.SIGTERM)
    assert cf.wait_exit(timeout=20) == 0  # long before the 40 s request could finish
    assert "Tunnel server stopped" in cf.messages()
    assert slow.result(timeout=30).status_code != 200


def test_reaches_the_edge_without_aiohttp_or_openssl_then_warms_its_proxy(
    spawn: Spawn, sim: Sim
) -> None:
    """Start-up cost: nothing on the way to the first registration loads aiohttp or OpenSSL
    (the import report and the log share stderr, so their order is the order of events); the
    origin proxy loads aiohttp a moment later, before any request asks for it."""
    cf = _start(spawn, sim, "portal", env={"PYTHONPROFILEIMPORTTIME": "1"})
    cf.wait_record("Registered tunnel connection")

    def imports() -> tuple[set[str], set[str]]:
        before: set[str] = set()
        after: set[str] = set()
        seen = before
        for line in cf.stderr.snapshot():
            text = line.decode(errors="replace")
            if "Registered tunnel connection" in text:
                seen = after
            elif text.startswith("import time:") and "|" in text:
                seen.add(text.rsplit("|", 1)[1].strip())
        return before, after

    wait_until(lambda: "aiohttp" in imports()[1], timeout=20, what="the proxy's warm-up")
    before = imports()[0]
    assert "tunnelkeeper.sim.connector" in before  # the report is there
    # a hidden module shows as a failed import of itself (`ssl`), never of the `_ssl` behind it
    early = {m for m in before if m.split(".")[0] in ("aiohttp", "yarl", "_ssl")}
    assert not early, f"loaded before the first registration: {sorted(early)}"
    assert _get(sim, "portal", "/echo?x=1").status_code == 200
