"""Prometheus metrics the daemon exports: one registry, no token, secret or pid in labels."""

from __future__ import annotations

import os

# Drop the *_created series prometheus_client adds to counters; they only add noise.
os.environ.setdefault("PROMETHEUS_DISABLE_CREATED_SERIES", "True")

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

RESTART_REASONS = ("exited", "no_connections", "unresponsive", "rotation", "upgrade")


# the long-lived tasks that are supervised (restarted when they fail), by their metric label
TASKS = ("loop", "converge", "probe", "alert_worker", "token_feed", "fleet", "loop_lag")


# 15 and 20 ms: the probe and loop-lag targets (p99 < 20 ms) must be readable off the buckets
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.replica_up = Gauge(
            "tunnelkeeper_replica_up",
            "1 while the replica's cloudflared process runs.",
            ["tunnel", "slot"],
            registry=r,
        )
        self.replica_ready_connections = Gauge(
            "tunnelkeeper_replica_ready_connections",
            "Edge connections of the replica, from cloudflared /ready readyConnections.",
            ["tunnel", "slot"],
            registry=r,
        )
        self.replica_state = Gauge(
            "tunnelkeeper_replica_state",
            "1 for the replica's current state.",
            ["tunnel", "slot", "state"],
            registry=r,
        )
        self.replica_restarts = Counter(
            "tunnelkeeper_replica_restarts",
            "Replicas replaced, by reason.",
            ["tunnel", "slot", "reason"],
            registry=r,
        )
        self.replica_cpu_seconds = Gauge(
            "tunnelkeeper_replica_cpu_seconds",
            "CPU time used by the replica's process.",
            ["tunnel", "slot"],
            registry=r,
        )
        self.replica_rss_bytes = Gauge(
            "tunnelkeeper_replica_resident_memory_bytes",
            "Resident memory of the replica's process.",
            ["tunnel", "slot"],
            registry=r,
        )
        self.replica_crash_looping = Gauge(
            "tunnelkeeper_replica_crash_looping",
            "1 while the slot's replica keeps exiting (crash loop).",
            ["tunnel", "slot"],
            registry=r,
        )
        self.tunnel_ready_replicas = Gauge(
            "tunnelkeeper_tunnel_ready_replicas",
            "Replicas of the tunnel with at least one edge connection.",
            ["tunnel"],
            registry=r,
        )
        self.tunnel_desired_replicas = Gauge(
            "tunnelkeeper_tunnel_desired_replicas",
            "Replicas the tunnel should have on this host.",
            ["tunnel"],
            registry=r,
        )
        self.tunnel_token_valid = Gauge(
            "tunnelkeeper_tunnel_token_valid",
            "1 when the tunnel has a valid token from its source.",
            ["tunnel"],
            registry=r,
        )
        self.token_rotations = Counter(
            "tunnelkeeper_token_rotations",
            "Token rotations by result.",
            ["tunnel", "result"],
            registry=r,
        )
        self.token_source_errors = Counter(
            "tunnelkeeper_token_source_errors",
            "Failed or refused reads of a tunnel's token source.",
            ["tunnel", "reason"],
            registry=r,
        )
        self.alerts_firing = Gauge(
            "tunnelkeeper_alerts_firing",
            "Alert instances currently firing, by alert name.",
            ["alertname"],
            registry=r,
        )
        self.alert_deliveries = Counter(
            "tunnelkeeper_alert_deliveries",
            "Notification delivery attempts by sink and result.",
            ["sink", "result"],
            registry=r,
        )
        self.alert_outbox_pending = Gauge(
            "tunnelkeeper_alert_outbox_pending",
            "Notifications waiting in the durable outbox.",
            registry=r,
        )
        self.fleet_connectors = Gauge(
            "tunnelkeeper_fleet_connectors",
            "Live connectors of the tunnel fleet-wide, from the Cloudflare API.",
            ["tunnel"],
            registry=r,
        )
        self.fleet_expected_connectors = Gauge(
            "tunnelkeeper_fleet_expected_connectors",
            "Connectors the tunnel should have fleet-wide (config expected_connectors).",
            ["tunnel"],
            registry=r,
        )
        self.fleet_colo_connections = Gauge(
            "tunnelkeeper_fleet_colo_connections",
            "Live connections of the tunnel per Cloudflare colo, from the Cloudflare API.",
            ["tunnel", "colo"],
            registry=r,
        )
        self.probe_duration = Histogram(
            "tunnelkeeper_probe_duration_seconds",
            "Time to probe one replica's /ready.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "tunnelkeeper_loop_lag_seconds",
            "How late the event loop runs a timer (sampled twice a second): what every page, "
            "probe and exit notice waits on top of its own work.",
            buckets=(*LATENCY_BUCKETS, 5.0),
            registry=r,
        )
        self.child_log_skipped = Counter(
            "tunnelkeeper_child_log_lines_skipped",
            "cloudflared log lines not re-emitted: suppressed by flood control, summarised "
            "backlog, or the rest of an over-long line.",
            ["tunnel", "slot"],
            registry=r,
        )
        self.child_log_unread = Counter(
            "tunnelkeeper_child_log_unread_bytes",
            "cloudflared log bytes left unread under a log flood: only the latest 64 KiB of "
            "each half second of a flood is read (its lines counted as skipped or relayed).",
            ["tunnel", "slot"],
            registry=r,
        )
        self.task_restarts = Counter(
            "tunnelkeeper_task_restarts",
            "Long-lived tasks that failed and were restarted (a bug or an exhausted resource; "
            "the daemon's log says which).",
            ["task"],
            registry=r,
        )
        for task in TASKS:
            self.task_restarts.labels(task)
        self.child_log_suppressed = Counter(
            "tunnelkeeper_child_log_lines_suppressed",
            "cloudflared log lines summarised instead of re-emitted (flood control).",
            ["tunnel"],
            registry=r,
        )

    def declare_tunnel(self, tunnel: str, expected_connectors: int | None) -> None:
        """Create a tunnel's failure series at 0, so that rules see the first failure as an
        increase (a series that appears at 1 has no increase to see)."""
        for result in ("success", "failed"):
            self.token_rotations.labels(tunnel, result)
        if expected_connectors is not None:
            self.fleet_expected_connectors.labels(tunnel).set(expected_connectors)

    def forget_slot(self, tunnel: str, slot: str) -> None:
        """Drop a slot's series when a reload shrinks the tunnel."""
        for gauge in (
            self.replica_up,
            self.replica_ready_connections,
            self.replica_crash_looping,
            self.replica_cpu_seconds,
            self.replica_rss_bytes,
        ):
            try:
                gauge.remove(tunnel, slot)
            except KeyError:
                pass
        for phase in (
            "starting",
            "ready",
            "degraded",
            "unhealthy",
            "unresponsive",
            "draining",
            "exited",
        ):
            try:
                self.replica_state.remove(tunnel, slot, phase)
            except KeyError:
                pass

    def declare_sink(self, sink: str) -> None:
        for result in ("delivered", "retry", "failed"):
            self.alert_deliveries.labels(sink, result)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
