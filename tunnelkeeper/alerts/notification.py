"""Alert values: what the daemon observes (Condition), what is firing (Alert), what is sent
(Notification), and their identity.

Identity is the fingerprint of the sorted label set, so the same fault raised twice, or raised by
two hosts for a fleet-wide alert (which carries no ``host``), is one alert instance.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

FIRING = "firing"
RESOLVED = "resolved"
# Alertmanager's "no end" marker for a firing alert in webhook payloads
ZERO_TIME = "0001-01-01T00:00:00Z"


def fingerprint(labels: Mapping[str, str]) -> str:
    """Hex digest of the sorted label set; independent of insertion order and of the host."""
    digest = hashlib.sha256()
    for key in sorted(labels):
        digest.update(key.encode())
        digest.update(b"\x00")
        digest.update(labels[key].encode())
        digest.update(b"\x01")
    return digest.hexdigest()[:16]


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("timestamp has no timezone")
    return moment


@dataclass(frozen=True)
class Condition:
    """A fact that is true right now, as observed by the daemon on one tick."""

    alertname: str
    labels: Mapping[str, str] = field(default_factory=dict)
    summary: str | None = None  # default: the catalog template formatted with labels + details
    details: Mapping[str, str] = field(default_factory=dict)  # annotations; volatile text here


@dataclass(frozen=True)
class Alert:
    """One firing alert instance."""

    alertname: str
    labels: Mapping[str, str]  # the identity: includes alertname, severity and (not fleet) host
    annotations: Mapping[str, str]
    severity: str
    active_at: datetime  # wall clock: the condition was first observed
    fired_at: datetime  # wall clock: it had held for for_seconds (startsAt)
    is_fleet_wide: bool = False
    generator_url: str = ""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)

    @property
    def dedup_key(self) -> str:
        """PagerDuty dedup_key: per instance, deterministic, equal on every host if fleet-wide."""
        return f"tunnelkeeper/{self.alertname}/{self.fingerprint}"

    @property
    def source(self) -> str:
        return "fleet" if self.is_fleet_wide else self.labels.get("host", "unknown")

    def to_dict(self) -> dict[str, Any]:
        return {
            "alertname": self.alertname,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "severity": self.severity,
            "active_at": self.active_at.isoformat(),
            "fired_at": self.fired_at.isoformat(),
            "fleet_wide": self.is_fleet_wide,
            "generator_url": self.generator_url,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        """Rebuild from :meth:`to_dict` output; ValueError/TypeError/KeyError if malformed."""
        labels = _str_map(data["labels"])
        alertname = data["alertname"]
        severity = data["severity"]
        if not isinstance(alertname, str) or labels.get("alertname") != alertname:
            raise ValueError("alertname does not match its label")
        if not isinstance(severity, str):
            raise ValueError("severity is not text")
        return cls(
            alertname=alertname,
            labels=labels,
            annotations=_str_map(data.get("annotations", {})),
            severity=severity,
            active_at=parse_time(str(data["active_at"])),
            fired_at=parse_time(str(data["fired_at"])),
            is_fleet_wide=bool(data.get("fleet_wide", False)),
            generator_url=str(data.get("generator_url", "")),
        )


@dataclass(frozen=True)
class Incident:
    """What makes a notification a page of an incident (see :mod:`~tunnelkeeper.alerts.incidents`):
    the group it belongs to, which update of it this is, and every alert it lists."""

    labels: Mapping[str, str]  # the group's labels: host and tunnel
    opened_at: datetime  # wall clock of the incident's first page
    update: int  # 0 for the first page, then 1, 2, ...
    members: tuple[Notification, ...]

    @property
    def key(self) -> str:
        """Per incident: equal on every page of it, new for the tunnel's next incident."""
        opened_ms = int(self.opened_at.timestamp() * 1000)
        return f"{fingerprint(self.labels)}-{opened_ms}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": dict(self.labels),
            "opened_at": self.opened_at.isoformat(),
            "update": self.update,
            "members": [m.to_dict() for m in self.members],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Incident:
        members = data["members"]
        update = data["update"]
        if not isinstance(members, list) or not members or not isinstance(update, int):
            raise ValueError("malformed incident")
        return cls(
            labels=_str_map(data["labels"]),
            opened_at=parse_time(str(data["opened_at"])),
            update=update,
            members=tuple(Notification.from_dict(m) for m in members),
        )


@dataclass(frozen=True)
class Notification:
    """A firing or resolved message about one alert instance, as sent to every sink; or, with
    ``incident``, one page of an incident listing several (``alert`` is then its lead)."""

    status: str  # FIRING | RESOLVED
    alert: Alert
    ends_at: datetime | None = None  # set when resolved: the condition cleared at this time
    incident: Incident | None = None

    @property
    def id(self) -> str:
        """Stable across retries and restarts: fingerprint + fire time + status (no dots); for
        an incident's page, the incident and the update's number."""
        if self.incident is not None:
            return f"i{self.incident.key}-{self.incident.update}"
        fired_ms = int(self.alert.fired_at.timestamp() * 1000)
        return f"{self.alert.fingerprint}-{fired_ms}-{self.status}"

    @property
    def members(self) -> tuple[Notification, ...]:
        """The alerts this message is about: an incident's members, else itself."""
        return self.incident.members if self.incident is not None else (self,)

    @property
    def is_firing(self) -> bool:
        return self.status == FIRING

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "alert": self.alert.to_dict(),
            "ends_at": self.ends_at.isoformat() if self.ends_at else None,
        }
        if self.incident is not None:
            out["incident"] = self.incident.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Notification:
        status = data["status"]
        if status not in (FIRING, RESOLVED):
            raise ValueError(f"unknown status {status!r}")
        ends_at = data.get("ends_at")
        incident = data.get("incident")
        return cls(
            status=status,
            alert=Alert.from_dict(data["alert"]),
            ends_at=parse_time(str(ends_at)) if ends_at else None,
            incident=Incident.from_dict(incident) if incident is not None else None,
        )


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise TypeError("expected an object")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise TypeError("expected text keys and values")
        out[key] = item
    return out
