"""Turns the conditions observed on each tick into firing and resolved notifications. Pure.

Rules (all times on the caller's monotonic ``now``; ``wall`` only stamps what people see):

* A condition must be active on every evaluation for ``for_seconds`` (the global default, or the
  alert's override) before it fires. One that clears earlier pages nobody.
* A firing alert fires once, and resolves once.
* Flap damping: a firing alert resolves only after its condition has been clear for
  ``resolve_hold_seconds`` (default 30 s). If the condition comes back within the hold, the alert
  simply stays firing: a replica that flaps faster than the hold pages once, not on every flap.
* Disabled alerts never fire; a firing alert that becomes disabled resolves like a cleared one.
* Identity is the fingerprint of the full label set (condition labels + ``alertname``,
  ``severity`` and, except for fleet-wide alerts, ``host``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from tunnelkeeper.alertcatalog import AlertSpec, render, spec_for
from tunnelkeeper.alerts.notification import (
    FIRING,
    RESOLVED,
    Alert,
    Condition,
    Notification,
    fingerprint,
)
from tunnelkeeper.config.model import AlertsConfig

SNAPSHOT_VERSION = 1


@dataclass
class _Instance:
    alert: Alert  # fired_at is meaningful only once is_firing
    active_since: float
    is_firing: bool = False
    clear_since: float | None = None
    cleared_at: datetime | None = None


class AlertEngine:
    def __init__(
        self,
        host: str,
        config: AlertsConfig,
        *,
        resolve_hold_seconds: float = 30.0,
        generator_url: str = "",
    ) -> None:
        self.host = host
        self.config = config
        self.resolve_hold_seconds = resolve_hold_seconds
        self.generator_url = generator_url
        self._instances: dict[str, _Instance] = {}

    # --- policy lookups -----------------------------------------------------------------------

    def for_seconds(self, alertname: str) -> float:
        override = self.config.overrides.get(alertname)
        if override is not None and override.for_seconds is not None:
            return override.for_seconds
        return self.config.for_seconds

    def is_enabled(self, alertname: str) -> bool:
        override = self.config.overrides.get(alertname)
        return override is None or override.enabled

    def severity(self, alertname: str) -> str:
        override = self.config.overrides.get(alertname)
        if override is not None and override.severity:
            return override.severity
        return spec_for(alertname).severity

    # --- evaluation ---------------------------------------------------------------------------

    def evaluate(
        self, active: Iterable[Condition], now: float, wall: datetime
    ) -> list[Notification]:
        """Feed the conditions true right now; get the notifications to send, in order."""
        out: list[Notification] = []
        seen: set[str] = set()
        for condition in active:
            if not self.is_enabled(condition.alertname):
                continue
            alert = self._alert_for(condition, wall)
            key = alert.fingerprint
            if key in seen:
                continue
            seen.add(key)
            inst = self._instances.get(key)
            if inst is None:
                inst = self._instances[key] = _Instance(alert=alert, active_since=now)
            else:
                inst.clear_since = inst.cleared_at = None
                # annotations are not identity: the latest text wins
                inst.alert = replace(inst.alert, annotations=alert.annotations)
            if not inst.is_firing and now - inst.active_since >= self.for_seconds(alert.alertname):
                inst.is_firing = True
                inst.alert = replace(inst.alert, fired_at=wall)
                out.append(Notification(FIRING, inst.alert))
        for key, inst in list(self._instances.items()):
            if key in seen:
                continue
            if not inst.is_firing:
                del self._instances[key]  # cleared before for_seconds: nobody is paged
                continue
            if inst.clear_since is None:
                inst.clear_since, inst.cleared_at = now, wall
            if now - inst.clear_since >= self.resolve_hold_seconds:
                del self._instances[key]
                # never before it fired, whatever the wall clock did in between (a backward step
                # would otherwise give endsAt < startsAt, which Alertmanager rejects)
                ended = max(inst.cleared_at or wall, inst.alert.fired_at)
                out.append(Notification(RESOLVED, inst.alert, ends_at=ended))
        return out

    def firing(self) -> list[Alert]:
        """Alerts currently firing (including those holding before their resolve)."""
        return [inst.alert for inst in self._instances.values() if inst.is_firing]

    def firing_and_holding(self) -> dict[str, Alert]:
        """Firing alerts whose condition holds right now (not waiting out a resolve hold)."""
        return {
            key: inst.alert
            for key, inst in self._instances.items()
            if inst.is_firing and inst.clear_since is None
        }

    def active_or_firing(self, alertname: str) -> list[Alert]:
        """Alerts of that name that are pending, firing or holding before their resolve."""
        return [i.alert for i in self._instances.values() if i.alert.alertname == alertname]

    def next_deadline(self) -> float | None:
        """When the next evaluation could fire or resolve something: a pending alert's
        ``for_seconds`` running out, or a clear one's resolve hold. The caller evaluates at
        that moment, so a page waits for nothing but its own hold time."""
        times = []
        for inst in self._instances.values():
            if not inst.is_firing:
                times.append(inst.active_since + self.for_seconds(inst.alert.alertname))
            elif inst.clear_since is not None:
                times.append(inst.clear_since + self.resolve_hold_seconds)
        return min(times) if times else None

    def fingerprint_of(self, condition: Condition) -> str:
        """The identity of the alert ``condition`` raises."""
        return fingerprint(self._labels(condition, spec_for(condition.alertname)))

    def _alert_for(self, condition: Condition, wall: datetime) -> Alert:
        spec = spec_for(condition.alertname)
        labels = self._labels(condition, spec)
        fields = {**condition.details, **labels}
        summary = condition.summary or render(spec.summary, fields)
        annotations = {"summary": summary}
        if spec.runbook:
            annotations["runbook"] = render(spec.runbook, fields)
        annotations.update(condition.details)
        return Alert(
            alertname=condition.alertname,
            labels=labels,
            annotations=annotations,
            severity=labels["severity"],
            active_at=wall,
            fired_at=wall,
            is_fleet_wide=spec.is_fleet_wide,
            generator_url=self.generator_url,
        )

    def _labels(self, condition: Condition, spec: AlertSpec) -> dict[str, str]:
        labels = {str(k): str(v) for k, v in condition.labels.items()}
        labels["alertname"] = condition.alertname
        labels["severity"] = self.severity(condition.alertname)
        if spec.is_fleet_wide:
            labels.pop("host", None)
        else:
            labels["host"] = self.host
        return labels

    # --- persistence --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state of the firing alerts, for :meth:`restore` after a restart."""
        return {
            "version": SNAPSHOT_VERSION,
            "firing": [inst.alert.to_dict() for inst in self._instances.values() if inst.is_firing],
        }

    def restore(self, snapshot: object, now: float) -> int:
        """Re-adopt firing alerts from a snapshot; malformed entries are skipped. Returns count.

        Restored alerts keep their fire time (so their notification ids are unchanged) and resolve
        through the normal hold if their condition is no longer observed.
        """
        if not isinstance(snapshot, Mapping) or snapshot.get("version") != SNAPSHOT_VERSION:
            return 0
        entries = snapshot.get("firing")
        if not isinstance(entries, list):
            return 0
        restored = 0
        for entry in entries:
            try:
                alert = Alert.from_dict(entry)
            except (KeyError, TypeError, ValueError):
                continue
            self._instances.setdefault(
                alert.fingerprint, _Instance(alert=alert, active_since=now, is_firing=True)
            )
            restored += 1
        return restored
