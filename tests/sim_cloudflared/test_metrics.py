"""cloudflared-sim's metrics server with no edge connection: endpoints and family names."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.sim_cloudflared.conftest import CfProc, Spawn
from tests.waiting import wait_until

START_FAMILIES = [
    "build_info",
    "cloudflared_config_local_config_pushes",
    "cloudflared_config_local_config_pushes_errors",
    "cloudflared_icmp_total_replies",
    "cloudflared_icmp_total_requests",
    "cloudflared_orchestration_config_version",
    "cloudflared_proxy_connect_latency",
    "cloudflared_proxy_connect_streams_errors",
    "cloudflared_tcp_active_sessions",
    "cloudflared_tcp_total_sessions",
    "cloudflared_udp_active_sessions",
    "cloudflared_udp_total_sessions",
    "cloudflared_tunnel_concurrent_requests_per_tunnel",
    "cloudflared_tunnel_ha_connections",
    "cloudflared_tunnel_request_errors",
    "cloudflared_tunnel_total_requests",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "go_goroutines",
    "promhttp_metric_handler_requests_total",
]
AFTER_FIRST_USE = [
    "cloudflared_tunnel_tunnel_register_success",
    "cloudflared_tunnel_tunnel_register_fail",
    "cloudflared_tunnel_server_locations",
]


@pytest.fixture
def cf(spawn: Spawn, silent_edge: str, token_file: Path) -> CfProc:
    env = {"CLOUDFLARED_SIM_VERSION": "2026.9.1", "CLOUDFLARED_SIM_BUILD_DATE": "2026-09-30"}
    proc = spawn(
        [
            "tunnel",
            "--edge",
            silent_edge,
            "--output",
            "json",
            "run",
            "--token-file",
            str(token_file),
        ],
        env=env,
    )
    wait_until(lambda: proc.get("/healthcheck").status_code == 200, what="metrics server")
    return proc


def test_ready_is_503_with_cloudflareds_body(cf: CfProc) -> None:
    r = cf.get("/ready")
    assert r.status_code == 503
    body = r.json()
    assert list(body) == ["status", "readyConnections", "connectorId"]
    assert body["status"] == 503
    assert body["readyConnections"] == 0
    assert f"Generated Connector ID: {body['connectorId']}" in cf.messages()


def test_healthcheck_is_always_ok(cf: CfProc) -> None:
    r = cf.get("/healthcheck")
    assert (r.status_code, r.text) == (200, "OK\n")


def test_diag_tunnel_has_no_connections_key_when_none(cf: CfProc) -> None:
    body = cf.get("/diag/tunnel").json()
    assert "connections" not in body
    assert body["connectorID"] == cf.ready()[1]["connectorId"]
    assert body["tunnelID"] == cf.wait_record("Starting tunnel")["tunnelID"]
    assert cf.get("/quicktunnel").json() == {"hostname": ""}


def test_metrics_family_names_and_build_info(cf: CfProc) -> None:
    text = cf.get("/metrics").text
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    missing = [name for name in START_FAMILIES if name not in families]
    assert not missing
    assert not [name for name in AFTER_FIRST_USE if name in families]
    assert not any(f.startswith("cloudflared_") and f.endswith("_total") for f in families)
    assert (
        'build_info{goversion="go1.27.3",revision="2026-09-30",type="",version="2026.9.1"} 1'
        in text.splitlines()
    )
    assert cf.metric("cloudflared_tunnel_ha_connections") == 1


def test_metrics_text_parses_with_promtool(cf: CfProc, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    res = subprocess.run(
        [promtool, "check", "metrics"],
        input=cf.get("/metrics").text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    # 0 = clean, 3 = lint only (cloudflared's own counters lack _total); 1 = unparsable
    assert res.returncode in (0, 3), res.stderr
    assert "error while linting" not in res.stderr


def test_unknown_path_is_404_and_pprof_cmdline_is_forbidden(cf: CfProc) -> None:
    assert cf.get("/nope").status_code == 404
    assert cf.get("/debug/pprof/cmdline").status_code == 403


def test_http_keep_alive_head_and_methods_like_gos_server(cf: CfProc) -> None:
    """One kept-alive connection answers request after request (the daemon's probes reuse
    theirs); HEAD has the headers without a body; a method Go's mux has no route for is 404."""
    with httpx.Client() as client:
        first = client.get(cf.url("/ready"))
        second = client.get(cf.url("/ready"))
        assert first.status_code == second.status_code == 503
        assert second.json()["readyConnections"] == 0
        assert first.headers["content-type"] == "application/json; charset=utf-8"
        assert "date" in first.headers
        head = client.head(cf.url("/healthcheck"))
        assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "3")
        assert client.post(cf.url("/ready")).status_code == 404
        metrics = client.get(cf.url("/metrics"))
        assert metrics.headers["x-content-type-options"] == "nosniff"
        assert metrics.headers["content-type"] == "text/plain; charset=utf-8"


def test_unparsable_request_is_400_and_closes(cf: CfProc) -> None:
    host, _, port = cf.metrics.rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert data.endswith(b"400 Bad Request")
