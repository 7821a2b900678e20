"""The payload each sink kind receives for a notification. Pure: values in, JSON-able out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from tunnelkeeper.alerts.notification import ZERO_TIME, Notification, rfc3339

PAGERDUTY_SUMMARY_LIMIT = 1024
PAGERDUTY_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}


def encode(payload: object) -> bytes:
    """The exact bytes sent (and signed): compact UTF-8 JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def group_labels_of(n: Notification) -> dict[str, str]:
    """An incident's group labels (host, tunnel); a lone alert is a group of its own."""
    return dict(n.incident.labels) if n.incident is not None else dict(n.alert.labels)


def group_key(n: Notification) -> str:
    """Alertmanager-style group key: the same for every page of a group."""
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(group_labels_of(n).items()))
    return "{}:{" + inner + "}"


def _common(maps: Sequence[dict[str, str]]) -> dict[str, str]:
    first = maps[0]
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


def _webhook_alert(n: Notification) -> dict[str, Any]:
    alert = n.alert
    return {
        "status": n.status,
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "startsAt": rfc3339(alert.fired_at),
        "endsAt": rfc3339(n.ends_at) if n.ends_at else ZERO_TIME,
        "generatorURL": alert.generator_url,
        "fingerprint": alert.fingerprint,
    }


def webhook_payload(n: Notification, receiver: str, external_url: str = "") -> dict[str, Any]:
    """Alertmanager webhook v4: this alert, or every alert of the incident's page."""
    members = n.members
    return {
        "version": "4",
        "groupKey": group_key(n),
        "truncatedAlerts": 0,
        "status": n.status,
        "receiver": receiver,
        "groupLabels": group_labels_of(n),
        "commonLabels": _common([dict(m.alert.labels) for m in members]),
        "commonAnnotations": _common([dict(m.alert.annotations) for m in members]),
        "externalURL": external_url or n.alert.generator_url,
        "alerts": [_webhook_alert(m) for m in members],
    }


def _target(n: Notification) -> str:
    labels = n.alert.labels
    target = labels.get("tunnel", "")
    if "slot" in labels:
        target = f"{target}/{labels['slot']}"
    if n.alert.is_fleet_wide:
        return f"{target} fleet-wide".strip()
    return f"{target} on {labels.get('host', '?')}".strip()


def human_duration(seconds: float) -> str:
    total = max(int(seconds), 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def headline(n: Notification) -> str:
    """One line a human reads first: status, alert, where, summary, for how long."""
    alert = n.alert
    summary = alert.annotations.get("summary", alert.alertname)
    if n.is_firing:
        held = human_duration((alert.fired_at - alert.active_at).total_seconds())
        return f"FIRING {alert.alertname} {_target(n)} — {summary} (for {held})"
    lasted = human_duration(((n.ends_at or alert.fired_at) - alert.active_at).total_seconds())
    return f"RESOLVED {alert.alertname} {_target(n)} — {summary} (lasted {lasted})"


def _also(n: Notification) -> list[Notification]:
    """An incident's members other than its lead."""
    return [m for m in n.members if m.alert.fingerprint != n.alert.fingerprint]


def incident_headline(n: Notification) -> str:
    """The lead's headline, for an incident with how many other alerts it lists."""
    lead = next((m for m in n.members if m.alert.fingerprint == n.alert.fingerprint), n)
    text = headline(lead)
    if n.incident is not None and n.incident.update:
        text = f"[update {n.incident.update}] {text}"
    others = len(_also(n))
    if others:
        text += f" (+{others} more)"
    return text


def slack_payload(n: Notification) -> dict[str, Any]:
    """One message per page: the lead's headline, then a line per other alert of the page."""
    if n.is_firing:
        text = ":red_circle: " + incident_headline(n)
        runbook = n.alert.annotations.get("runbook")
        if runbook:
            text += f"\n_runbook:_ {runbook}"
    else:
        text = ":large_green_circle: " + incident_headline(n)
    for m in _also(n):
        text += "\n• " + headline(m)
    return {"text": text}


def dedup_key(n: Notification) -> str:
    """PagerDuty's dedup_key: one per incident (every update and its resolve use it), or per
    alert instance for a lone alert (equal on every host if fleet-wide)."""
    if n.incident is not None:
        return f"tunnelkeeper/incident/{n.incident.key}"
    return n.alert.dedup_key


def pagerduty_payload(n: Notification, routing_key: str) -> dict[str, Any]:
    """Events API v2: trigger with the full payload (an incident's later pages are triggers
    with the same dedup_key, which PagerDuty folds into the open incident), resolve with the
    dedup_key only."""
    alert = n.alert
    if not n.is_firing:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key(n)}
    summary = incident_headline(n)
    if len(summary) > PAGERDUTY_SUMMARY_LIMIT:
        summary = summary[: PAGERDUTY_SUMMARY_LIMIT - 1] + "…"
    payload: dict[str, Any] = {
        "summary": summary,
        "source": alert.source,
        "severity": PAGERDUTY_SEVERITY.get(alert.severity, "warning"),
        "timestamp": rfc3339(alert.fired_at),
        "class": alert.alertname,
        "custom_details": {**alert.labels, **alert.annotations},
    }
    if n.incident is not None:
        payload["custom_details"]["alerts"] = [
            {"status": m.status, **m.alert.labels, "summary": m.alert.annotations.get("summary")}
            for m in n.members
        ]
    if "tunnel" in alert.labels:
        payload["component"] = alert.labels["tunnel"]
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(n),
        "payload": payload,
        "client": "tunnelkeeper",
    }
    if alert.generator_url:
        body["client_url"] = alert.generator_url
    return body


# A firing alert is posted with endsAt this far ahead (as Prometheus does: 4 x its resend
# interval), so Alertmanager keeps it while we re-post every 45 s, expires it if we die, and
# never has to fill endsAt in from its own clock — which, with our clock ahead of its by more
# than its resolve_timeout, would put endsAt before our startsAt and make it reject the alert.
FIRING_HORIZON = timedelta(seconds=180)


def alertmanager_payload(notifications: Sequence[Notification]) -> list[dict[str, Any]]:
    """``POST /api/v2/alerts`` body: firing alerts carry endsAt = now + FIRING_HORIZON (never
    before startsAt), resolved ones the time their condition cleared."""
    out: list[dict[str, Any]] = []
    now = datetime.now(UTC)
    for n in notifications:
        entry: dict[str, Any] = {
            "labels": dict(n.alert.labels),
            "annotations": dict(n.alert.annotations),
            "startsAt": rfc3339(n.alert.fired_at),
        }
        if n.ends_at is not None:
            entry["endsAt"] = rfc3339(max(n.ends_at, n.alert.fired_at))
        else:
            entry["endsAt"] = rfc3339(max(now, n.alert.fired_at) + FIRING_HORIZON)
        if n.alert.generator_url:
            entry["generatorURL"] = n.alert.generator_url
        out.append(entry)
    return out
