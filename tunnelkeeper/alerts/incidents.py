"""One incident, one page: inhibition and grouping for the sinks that page people directly
(webhook, Slack, PagerDuty). Pure: the engine's notifications in, the pages out.

Alertmanager's semantics are the model (the ``alertmanager`` sink gets every alert as it is, and
``monitoring/alertmanager.yml`` holds the same rules for Alertmanager to apply):

* **Inhibition.** While a tunnel's ``TunnelDown`` is active (its condition holds, pending or
  firing) or still firing (in its resolve hold), that tunnel's ``ReplicaDown``,
  ``ReplicaNoEdgeConnections``, ``ReplicaCrashLooping`` and ``TunnelDegraded`` on this host page
  nobody: the tunnel is down, and that says it all. An inhibited alert that still holds when the
  inhibition ends pages then; one that has cleared by then never pages, and neither does its
  resolve. (With the default 30 s resolve hold, a recovered tunnel's crash loops end — 5 s of
  serving — and its restarting replicas come up before its TunnelDown resolves.) Inhibiting
  on the *pending* TunnelDown (not only the firing one) is what keeps a replica that died a few
  milliseconds before its siblings from paging ahead of the tunnel.
  Fleet-wide alerts are never inhibited by a host's own alerts.
* **Grouping.** A tunnel's alerts on this host form one incident. Its first page goes out at
  once, with everything that fired in the same evaluation; alerts that fire or resolve later go
  out as updates of it, at most one per ``group_window_seconds``. When nothing in it is firing
  any more, one resolve closes it at once (an all-clear never waits for the window); the
  tunnel's next alert opens a new incident. Fleet-wide alerts and alerts without a tunnel are
  sent one by one as before.

A page is a :class:`~tunnelkeeper.alerts.notification.Notification` whose ``incident`` lists its
members; its ``alert`` is the lead (the most severe firing member, else the first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tunnelkeeper.alertcatalog import SEVERITY_RANK
from tunnelkeeper.alerts.engine import AlertEngine
from tunnelkeeper.alerts.notification import (
    FIRING,
    RESOLVED,
    Alert,
    Condition,
    Incident,
    Notification,
    fingerprint,
    parse_time,
)
from tunnelkeeper.config.model import AlertsConfig

INHIBITOR = "TunnelDown"
INHIBITED = frozenset(
    {"ReplicaDown", "ReplicaNoEdgeConnections", "ReplicaCrashLooping", "TunnelDegraded"}
)


def group_labels(alert: Alert) -> dict[str, str] | None:
    """The labels of the incident an alert belongs to, or None if it is paged on its own."""
    tunnel = alert.labels.get("tunnel")
    if alert.is_fleet_wide or tunnel is None:
        return None
    return {"host": alert.labels.get("host", ""), "tunnel": tunnel}


@dataclass
class _Group:
    labels: dict[str, str]
    opened_at: datetime
    update: int = 0
    members: dict[str, Notification] = field(default_factory=dict)  # fingerprint -> latest
    changed: set[str] = field(default_factory=set)  # fingerprints not yet told
    last_page_at: float = -1e18  # monotonic
    flush_at: float | None = None

    def page(self) -> Notification:
        members = tuple(self.members.values())
        firing = [m for m in members if m.is_firing]
        if firing:
            lead = max(firing, key=lambda m: SEVERITY_RANK.get(m.alert.severity, 0))
            status, ends_at = FIRING, None
        else:
            lead = members[0]
            status = RESOLVED
            ends_at = max((m.ends_at for m in members if m.ends_at), default=None)
        incident = Incident(self.labels, self.opened_at, self.update, members)
        return Notification(status, lead.alert, ends_at=ends_at, incident=incident)


class Incidents:
    def __init__(self, config: AlertsConfig) -> None:
        self.config = config
        self._groups: dict[str, _Group] = {}
        self._suppressed: dict[str, Alert] = {}  # firing, inhibited: fingerprint -> alert

    # --- the engine's notifications in, pages out ------------------------------------------------

    def route(
        self,
        notifications: Sequence[Notification],
        now: float,
        wall: datetime,
        *,
        inhibiting: Iterable[str] = (),
        still_active: Mapping[str, Alert] | None = None,
    ) -> list[Notification]:
        """``inhibiting``: tunnels whose TunnelDown is active or firing; ``still_active``:
        firing alerts whose condition holds right now (an inhibited one pages when its
        inhibition ends only if it is among them)."""
        inhibited_tunnels = set(inhibiting) if self.config.inhibit else set()
        incoming = list(notifications)
        for key, alert in list(self._suppressed.items()):
            if alert.labels.get("tunnel") in inhibited_tunnels:
                continue
            # inhibition over: one that still holds pages now; one waiting out its resolve
            # hold stays silenced, and its resolve is swallowed when it comes
            if still_active is not None and key in still_active:
                del self._suppressed[key]
                incoming.append(Notification(FIRING, still_active[key]))
        out: list[Notification] = []
        opened: dict[str, _Group] = {}
        # the inhibitor first, so what fires beside it in one evaluation is held back by it
        for n in sorted(incoming, key=lambda n: n.alert.alertname != INHIBITOR):
            if self._inhibit(n, inhibited_tunnels):
                continue
            labels = group_labels(n.alert) if self.config.group_by_tunnel else None
            if labels is None:
                out.append(n)
                continue
            gkey = fingerprint(labels)
            group = self._groups.get(gkey)
            if group is None:
                if not n.is_firing:
                    out.append(n)  # told before this daemon kept incidents: resolve it alone
                    continue
                group = self._groups[gkey] = opened[gkey] = _Group(labels, wall)
            group.members[n.alert.fingerprint] = n
            group.changed.add(n.alert.fingerprint)
        for group in opened.values():  # the first page: at once, with all that came with it
            out.append(self._flush(group, now))
        for group in list(self._groups.values()):
            if not group.changed:
                continue
            if not any(m.is_firing for m in group.members.values()):
                group.flush_at = now  # all clear: the resolve never waits
            elif group.flush_at is None:
                group.flush_at = max(now, group.last_page_at + self.config.group_window_seconds)
        return out + self.due(now)

    def _inhibit(self, n: Notification, tunnels: set[str]) -> bool:
        key = n.alert.fingerprint
        if not n.is_firing and key in self._suppressed:
            del self._suppressed[key]  # it never paged: neither does its end
            return True
        if (
            n.is_firing
            and n.alert.alertname in INHIBITED
            and not n.alert.is_fleet_wide
            and n.alert.labels.get("tunnel") in tunnels
            and not self._told(n.alert)
        ):
            self._suppressed[key] = n.alert
            return True
        return False

    def _told(self, alert: Alert) -> bool:
        labels = group_labels(alert)
        group = self._groups.get(fingerprint(labels)) if labels is not None else None
        return group is not None and alert.fingerprint in group.members

    def due(self, now: float) -> list[Notification]:
        """Updates whose group window has passed."""
        out = []
        for group in list(self._groups.values()):
            if group.flush_at is not None and group.flush_at <= now:
                out.append(self._flush(group, now))
        return out

    def _flush(self, group: _Group, now: float) -> Notification:
        page = group.page()
        group.update += 1
        group.changed.clear()
        group.last_page_at, group.flush_at = now, None
        # what was told resolved is done with; a group with nothing firing is closed
        group.members = {k: m for k, m in group.members.items() if m.is_firing}
        if not group.members:
            del self._groups[fingerprint(group.labels)]
        return page

    def next_deadline(self) -> float | None:
        times = [g.flush_at for g in self._groups.values() if g.flush_at is not None]
        return min(times) if times else None

    def open_incidents(self) -> int:
        return len(self._groups)

    # --- persistence (kept with the engine's state, in the outbox's transaction) ----------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "groups": [
                {
                    "labels": g.labels,
                    "opened_at": g.opened_at.isoformat(),
                    "update": g.update,
                    "members": [m.to_dict() for m in g.members.values()],
                    "changed": sorted(g.changed),
                }
                for g in self._groups.values()
            ],
            "suppressed": [a.to_dict() for a in self._suppressed.values()],
        }

    def restore(self, snapshot: object, now: float) -> None:
        """Open incidents and inhibited alerts from :meth:`snapshot`; malformed parts are
        skipped (their alerts then resolve one by one)."""
        if not isinstance(snapshot, Mapping):
            return
        for entry in snapshot.get("groups") or []:
            try:
                labels = {str(k): str(v) for k, v in dict(entry["labels"]).items()}
                members = [Notification.from_dict(m) for m in entry["members"]]
                group = _Group(labels, parse_time(str(entry["opened_at"])), int(entry["update"]))
            except (KeyError, TypeError, ValueError):
                continue
            group.members = {m.alert.fingerprint: m for m in members}
            group.changed = {str(k) for k in entry.get("changed", [])} & set(group.members)
            group.flush_at = now if group.changed else None
            if group.members:
                self._groups[fingerprint(labels)] = group
        for entry in snapshot.get("suppressed") or []:
            try:
                alert = Alert.from_dict(entry)
            except (KeyError, TypeError, ValueError):
                continue
            self._suppressed[alert.fingerprint] = alert


def evaluate(
    engine: AlertEngine,
    incidents: Incidents,
    active: Sequence[Condition],
    now: float,
    wall: datetime,
) -> tuple[list[Notification], list[Notification]]:
    """One evaluation: (every alert's notifications, for Alertmanager sinks; the incidents'
    pages, for the others). A tunnel is inhibiting while its TunnelDown condition holds or its
    alert is pending, firing or holding before its resolve."""
    notifications = engine.evaluate(active, now, wall)
    down = {c.labels.get("tunnel", "") for c in active if c.alertname == INHIBITOR}
    down |= {a.labels.get("tunnel", "") for a in engine.active_or_firing(INHIBITOR)}
    pages = incidents.route(
        notifications, now, wall, inhibiting=down, still_active=engine.firing_and_holding()
    )
    return notifications, pages
