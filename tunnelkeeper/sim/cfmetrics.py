"""cloudflared-sim's metrics: the state behind /ready, /metrics and /diag/tunnel, the Prometheus
text, and the listener (its address rules and Go's error texts). Serving is in
:mod:`~tunnelkeeper.sim.cfserve`.

The Prometheus text is written here from a small registry of values so that the family
names are cloudflared's own: Go's client names counters without a ``_total`` suffix
(``cloudflared_tunnel_total_requests``), which prometheus_client would rename.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from tunnelkeeper.promtext import label_text

GO_VERSION = "go1.27.3"
DEFAULT_PORTS = range(20241, 20246)
_LATENCY_BUCKETS = (1, 10, 25, 50, 100, 500, 1000, 5000)


class MetricsBindError(Exception):
    """The metrics listener could not be opened; str() is cloudflared's exact text."""


@dataclass
class Connection:
    index: int
    connection_id: str
    location: str
    ip: str
    protocol: str = "quic"


@dataclass
class TunnelState:
    """What the metrics server reports; written by the connection loops."""

    tunnel_id: str
    connector_id: str
    version: str
    build_date: str
    connections: dict[int, Connection] = field(default_factory=dict)
    ha_connections: int = 0
    total_requests: int = 0
    request_errors: int = 0
    concurrent_requests: int = 0
    register_success: dict[str, int] = field(default_factory=dict)
    register_fail: dict[tuple[str, str], int] = field(default_factory=dict)
    server_locations: dict[tuple[str, str], int] = field(default_factory=dict)
    responses_by_code: dict[str, int] = field(default_factory=dict)
    scrapes: dict[str, int] = field(default_factory=dict)


Samples = list[tuple[dict[str, str], float]]

# Exposition order, "type help". Families without samples are left out, like Go's
# labelled vectors before first use; the always-zero ones cover proxies the sim lacks.
_FAMILIES = {
    "build_info": "gauge Build and version information",
    "cloudflared_config_local_config_pushes": "counter Number of local configuration pushes",
    "cloudflared_config_local_config_pushes_errors": "counter Number of local push errors",
    "cloudflared_icmp_total_replies": "counter Total count of ICMP replies",
    "cloudflared_icmp_total_requests": "counter Total count of ICMP requests",
    "cloudflared_orchestration_config_version": "gauge Configuration Version",
    "cloudflared_proxy_connect_latency": "histogram Time it takes to establish connections in ms",
    "cloudflared_proxy_connect_streams_errors": "counter Total count of failure to proxy",
    "cloudflared_tcp_active_sessions": "gauge Concurrent count of TCP sessions",
    "cloudflared_tcp_total_sessions": "counter Total count of TCP sessions",
    "cloudflared_tunnel_concurrent_requests_per_tunnel": "gauge Concurrent requests proxied",
    "cloudflared_tunnel_ha_connections": "gauge Number of active ha connections",
    "cloudflared_tunnel_request_errors": "counter Amount of requests errors",
    "cloudflared_tunnel_response_by_code": "counter Count of responses by HTTP status code",
    "cloudflared_tunnel_server_locations": "gauge Where each tunnel is connected to",
    "cloudflared_tunnel_total_requests": "counter Amount of requests proxied",
    "cloudflared_tunnel_tunnel_register_fail": "counter Count of registration errors by type",
    "cloudflared_tunnel_tunnel_register_success": "counter Count of successful registrations",
    "cloudflared_udp_active_sessions": "gauge Concurrent count of UDP sessions",
    "cloudflared_udp_total_sessions": "counter Total count of UDP sessions",
    "go_goroutines": "gauge Number of goroutines that currently exist.",
    "go_info": "gauge Information about the Go environment.",
    "go_threads": "gauge Number of OS threads created.",
    "process_cpu_seconds_total": "counter Total user and system CPU time spent in seconds.",
    "process_max_fds": "gauge Maximum number of open file descriptors.",
    "process_open_fds": "gauge Number of open file descriptors.",
    "process_resident_memory_bytes": "gauge Resident memory size in bytes.",
    "process_start_time_seconds": "gauge Start time of the process since unix epoch.",
    "process_virtual_memory_bytes": "gauge Virtual memory size in bytes.",
    "process_virtual_memory_max_bytes": "gauge Maximum amount of virtual memory available.",
    "promhttp_metric_handler_requests_in_flight": "gauge Current number of scrapes being served.",
    "promhttp_metric_handler_requests_total": "counter Total number of scrapes by HTTP code.",
}


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    number = str(int(value)) if float(value).is_integer() else repr(float(value))
    return f"{name}{label_text(list(labels), list(labels.values()))} {number}"


def _samples(s: TunnelState) -> dict[str, Samples]:
    proc = _proc_self()
    out: dict[str, Samples] = {name: [({}, 0)] for name in _FAMILIES}
    info = {"goversion": GO_VERSION, "revision": s.build_date, "type": "", "version": s.version}
    out["build_info"] = [(info, 1)]
    out["cloudflared_tunnel_concurrent_requests_per_tunnel"] = [({}, s.concurrent_requests)]
    out["cloudflared_tunnel_ha_connections"] = [({}, s.ha_connections)]
    out["cloudflared_tunnel_request_errors"] = [({}, s.request_errors)]
    out["cloudflared_tunnel_total_requests"] = [({}, s.total_requests)]
    out["cloudflared_tunnel_response_by_code"] = [
        ({"status_code": c}, n) for c, n in sorted(s.responses_by_code.items())
    ]
    out["cloudflared_tunnel_server_locations"] = [
        ({"connection_id": c, "edge_location": loc}, n)
        for (c, loc), n in sorted(s.server_locations.items())
    ]
    out["cloudflared_tunnel_tunnel_register_fail"] = [
        ({"error": e, "rpcName": r}, n) for (e, r), n in sorted(s.register_fail.items())
    ]
    out["cloudflared_tunnel_tunnel_register_success"] = [
        ({"rpcName": r}, n) for r, n in sorted(s.register_success.items())
    ]
    out["go_info"] = [({"version": GO_VERSION}, 1)]
    out["go_threads"] = [({}, threading.active_count())]
    out["process_max_fds"] = [({}, resource.getrlimit(resource.RLIMIT_NOFILE)[0])]
    for key in (
        "cpu_seconds_total",
        "open_fds",
        "resident_memory_bytes",
        "start_time_seconds",
        "virtual_memory_bytes",
    ):
        out[f"process_{key}"] = [({}, proc.get(key, 0))]
    out["process_virtual_memory_max_bytes"] = [({}, -1)]
    out["promhttp_metric_handler_requests_in_flight"] = [({}, 1)]
    out["promhttp_metric_handler_requests_total"] = [
        ({"code": c}, s.scrapes.get(c, 0)) for c in ("200", "500", "503")
    ]
    return out


def render_metrics(s: TunnelState) -> str:
    samples = _samples(s)
    lines: list[str] = []
    for name, spec in _FAMILIES.items():
        kind, help_text = spec.split(" ", 1)
        if not samples[name]:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        if kind == "histogram":
            lines += [f'{name}_bucket{{le="{b}"}} 0' for b in (*_LATENCY_BUCKETS, "+Inf")]
            lines += [f"{name}_sum 0", f"{name}_count 0"]
        else:
            lines += [_sample(name, labels, value) for labels, value in samples[name]]
    return "\n".join(lines) + "\n"


def _proc_self() -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        out["cpu_seconds_total"] = (int(fields[11]) + int(fields[12])) / ticks
        out["virtual_memory_bytes"] = int(fields[20])
        out["resident_memory_bytes"] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        with open("/proc/stat", encoding="ascii") as f:
            btime = next(int(ln.split()[1]) for ln in f if ln.startswith("btime"))
        out["start_time_seconds"] = btime + int(fields[19]) / ticks
        out["open_fds"] = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    return out


def ready_body(s: TunnelState) -> tuple[int, dict[str, Any]]:
    n = len(s.connections)
    status = 200 if n > 0 else 503
    return status, {"status": status, "readyConnections": n, "connectorId": s.connector_id}


def diag_tunnel(s: TunnelState) -> dict[str, Any]:
    conns: list[dict[str, Any]] = []
    for index in sorted(s.connections):
        c = s.connections[index]
        entry: dict[str, Any] = {"isConnected": True}
        if c.protocol == "quic":  # Go omitempty: http2 (0) has no protocol key
            entry["protocol"] = 1
        entry["edgeAddress"] = c.ip
        if index:  # Go omitempty: index 0 has no index key
            entry["index"] = index
        conns.append(entry)
    body: dict[str, Any] = {"tunnelID": s.tunnel_id, "connectorID": s.connector_id}
    if conns:
        body["connections"] = conns
    body["icmp_sources"] = ["127.0.0.1", "::1"]
    return body


def split_host_port(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise MetricsBindError(
            f"Error opening metrics server listener: failed to bind to address ({addr}): "
            f"listen tcp {addr}: address {addr}: missing port in address"
        )
    return host.strip("[]") or "0.0.0.0", int(port)


def bind_listener(addr: str) -> socket.socket:
    """Open the metrics listener exactly at addr (host:port), or raise with Go's text."""
    host, port = split_host_port(addr)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise MetricsBindError(
            f"Error opening metrics server listener: failed to bind to address ({addr}): "
            f"listen tcp {addr}: lookup {host}: no such host"
        ) from exc
    family, _, _, _, sockaddr = infos[0]
    shown = f"[{sockaddr[0]}]:{port}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{port}"
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        text = os.strerror(exc.errno or errno.EINVAL)
        raise MetricsBindError(
            f"Error opening metrics server listener: failed to bind to address ({addr}): "
            f"listen tcp {shown}: bind: {text[:1].lower()}{text[1:]}"
        ) from exc
    sock.setblocking(False)
    return sock


def open_default_listener() -> socket.socket:
    """cloudflared's default: localhost:20241..20245, then a random port."""
    for port in DEFAULT_PORTS:
        try:
            return bind_listener(f"localhost:{port}")
        except MetricsBindError:
            continue
    return bind_listener("localhost:0")


def listener_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
