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


def group_key(n: Notification) -> str:
    """Alertmanager-style group key: one alert per group, so it names the whole label set."""
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(n.alert.labels.items()))
    return "{}:{" + inner + "}"


def webhook_payload(n: Notification, receiver: str, external_url: str = "") -> dict[str, Any]:
    """Alertmanager webhook v4, with exactly this one alert."""
    alert = n.alert
    entry = {
        "status": n.status,
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "startsAt": rfc3339(alert.fired_at),
        "endsAt": rfc3339(n.ends_at) if n.ends_at else ZERO_TIME,
        "generatorURL": alert.generator_url,
        "fingerprint": alert.fingerprint,
    }
    return {
        "version": "4",
        "groupKey": group_key(n),
        "truncatedAlerts": 0,
        "status": n.status,
        "receiver": receiver,
        "groupLabels": dict(alert.labels),
        "commonLabels": dict(alert.labels),
        "commonAnnotations": dict(alert.annotations),
        "externalURL": external_url or alert.generator_url,
        "alerts": [entry],
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


def slack_payload(n: Notification) -> dict[str, Any]:
    if n.is_firing:
        text = ":red_circle: " + headline(n)
        runbook = n.alert.annotations.get("runbook")
        if runbook:
            text += f"\n_runbook:_ {runbook}"
    else:
        text = ":large_green_circle: " + headline(n)
    return {"text": text}


def pagerduty_payload(n: Notification, routing_key: str) -> dict[str, Any]:
    """Events API v2: trigger with the full payload, resolve with the dedup_key only."""
    alert = n.alert
    if not n.is_firing:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": alert.dedup_key}
    summary = headline(n)
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
    if "tunnel" in alert.labels:
        payload["component"] = alert.labels["tunnel"]
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": alert.dedup_key,
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
