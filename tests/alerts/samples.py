"""Notification values for alert tests, built through the real engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tunnelkeeper.alerts import AlertEngine, Condition, Notification
from tunnelkeeper.config.model import AlertsConfig

T0 = datetime(2026, 1, 10, 9, 0, 0, tzinfo=UTC)


def fire_and_resolve(
    alertname: str = "ReplicaNoEdgeConnections",
    labels: dict[str, str] | None = None,
    host: str = "origin-01",
    start: datetime = T0,
) -> tuple[Notification, Notification]:
    """One alert instance's firing and resolved notifications (for_seconds 5, hold 30)."""
    engine = AlertEngine(host, AlertsConfig(for_seconds=5.0), resolve_hold_seconds=30.0)
    cond = Condition(alertname, labels if labels is not None else {"tunnel": "portal", "slot": "1"})
    engine.evaluate([cond], 100.0, start)
    (fired,) = engine.evaluate([cond], 112.0, start + timedelta(seconds=12))
    engine.evaluate([], 120.0, start + timedelta(seconds=20))
    (resolved,) = engine.evaluate([], 150.0, start + timedelta(seconds=50))
    return fired, resolved


def many(count: int, start: datetime = T0) -> list[Notification]:
    """``count`` alert instances (slots 0..count-1), each firing then resolved, in send order."""
    out: list[Notification] = []
    for slot in range(count):
        out.extend(fire_and_resolve(labels={"tunnel": "portal", "slot": str(slot)}, start=start))
    return out


def is_firing_post(entry: dict[str, Any]) -> bool:
    """Firing alerts are posted with endsAt ahead of now (Alertmanager keeps them that long);
    resolved ones with the past time their condition cleared."""
    ends = datetime.fromisoformat(entry["endsAt"].replace("Z", "+00:00"))
    return ends > datetime.now(UTC)
