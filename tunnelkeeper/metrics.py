"""Prometheus metrics the daemon exports: one registry, no token, secret or pid in labels."""

from __future__ import annotations

from tunnelkeeper.promtext import Registry

RESTART_REASONS = ("exited", "no_connections", "unresponsive", "rotation", "upgrade")


# the long-lived tasks that are supervised (restarted when they fail), by their metric label
TASKS = ("loop", "converge", "probe", "alert_worker", "token_feed", "fleet", "loop_lag")


# 15 and 20 ms: the probe and loop-lag targets (p99 < 20 ms) must be readable off the buckets
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = Registry()
        self.replica_up = r.gauge(
            "tunnelkeeper_replica_up",
            "1 while the replica's cloudflared process runs.",
            ["tunnel", "slot"],
        )
        self.replica_ready_connections = r.gauge(
            "tunnelkeeper_replica_ready_connections",
            "Edge connections of the replica, from cloudflared /ready readyConnections.",
            ["tunnel", "slot"],
        )
        self.replica_state = r.gauge(
            "tunnelkeeper_replica_state",
            "1 for the replica's current state.",
            ["tunnel", "slot", "state"],
        )
        self.replica_restarts = r.counter(
            "tunnelkeeper_replica_restarts",
            "Replicas replaced, by reason.",
            ["tunnel", "slot", "reason"],
        )
        self.replica_cpu_seconds = r.gauge(
            "tunnelkeeper_replica_cpu_seconds",
            "CPU time used by the replica's process.",
            ["tunnel", "slot"],
        )
        self.replica_rss_bytes = r.gauge(
            "tunnelkeeper_replica_resident_memory_bytes",
            "Resident memory of the replica's process.",
            ["tunnel", "slot"],
        )
        self.replica_crash_looping = r.gauge(
            "tunnelkeeper_replica_crash_looping",
            "1 while the slot's replica keeps exiting (crash loop).",
            ["tunnel", "slot"],
        )
        self.tunnel_ready_replicas = r.gauge(
            "tunnelkeeper_tunnel_ready_replicas",
            "Replicas of the tunnel with at least one edge connection.",
            ["tunnel"],
        )
        self.tunnel_desired_replicas = r.gauge(
            "tunnelkeeper_tunnel_desired_replicas",
            "Replicas the tunnel should have on this host.",
            ["tunnel"],
        )
        self.tunnel_token_valid = r.gauge(
            "tunnelkeeper_tunnel_token_valid",
            "1 when the tunnel has a valid token from its source.",
            ["tunnel"],
        )
        self.token_rotations = r.counter(
            "tunnelkeeper_token_rotations",
            "Token rotations by result.",
            ["tunnel", "result"],
        )
        self.token_source_errors = r.counter(
            "tunnelkeeper_token_source_errors",
            "Failed or refused reads of a tunnel's token source.",
            ["tunnel", "reason"],
        )
        self.alerts_firing = r.gauge(
            "tunnelkeeper_alerts_firing",
            "Alert instances currently firing, by alert name.",
            ["alertname"],
        )
        self.alert_deliveries = r.counter(
            "tunnelkeeper_alert_deliveries",
            "Notification delivery attempts by sink and result.",
            ["sink", "result"],
        )
        self.alert_outbox_pending = r.gauge(
            "tunnelkeeper_alert_outbox_pending",
            "Notifications waiting in the durable outbox.",
        )
        self.fleet_connectors = r.gauge(
            "tunnelkeeper_fleet_connectors",
            "Live connectors of the tunnel fleet-wide, from the Cloudflare API.",
            ["tunnel"],
        )
        self.fleet_expected_connectors = r.gauge(
            "tunnelkeeper_fleet_expected_connectors",
            "Connectors the tunnel should have fleet-wide (config expected_connectors).",
            ["tunnel"],
        )
        self.fleet_colo_connections = r.gauge(
            "tunnelkeeper_fleet_colo_connections",
            "Live connections of the tunnel per Cloudflare colo, from the Cloudflare API.",
            ["tunnel", "colo"],
        )
        self.probe_duration = r.histogram(
            "tunnelkeeper_probe_duration_seconds",
            "Time to probe one replica's /ready.",
            LATENCY_BUCKETS,
        )
        self.loop_lag = r.histogram(
            "tunnelkeeper_loop_lag_seconds",
            "How late the event loop runs a timer (sampled twice a second): what every page, "
            "probe and exit notice waits on top of its own work.",
            (*LATENCY_BUCKETS, 5.0),
        )
        self.child_log_skipped = r.counter(
            "tunnelkeeper_child_log_lines_skipped",
            "cloudflared log lines not re-emitted: suppressed by flood control, summarised "
            "backlog, or the rest of an over-long line.",
            ["tunnel", "slot"],
        )
        self.child_log_unread = r.counter(
            "tunnelkeeper_child_log_unread_bytes",
            "cloudflared log bytes left unread under a log flood: only the latest 64 KiB of "
            "each half second of a flood is read (its lines counted as skipped or relayed).",
            ["tunnel", "slot"],
        )
        self.task_restarts = r.counter(
            "tunnelkeeper_task_restarts",
            "Long-lived tasks that failed and were restarted (a bug or an exhausted resource; "
            "the daemon's log says which).",
            ["task"],
        )
        for task in TASKS:
            self.task_restarts.labels(task)
        self.child_log_suppressed = r.counter(
            "tunnelkeeper_child_log_lines_suppressed",
            "cloudflared log lines summarised instead of re-emitted (flood control).",
            ["tunnel"],
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
        return self.registry.exposition()
