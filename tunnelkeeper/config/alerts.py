"""Validating ``[alerts]``: the hold time, per-alert overrides and the ``[[alerts.sink]]`` list."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from tunnelkeeper.alertcatalog import ALERT_NAMES
from tunnelkeeper.config.fields import Section
from tunnelkeeper.config.model import (
    SEVERITIES,
    AlertOverride,
    AlertsConfig,
    SinkConfig,
    defaults,
)
from tunnelkeeper.config.wording import describe, suggestion

ALERTS = defaults(AlertsConfig)
OVERRIDE = defaults(AlertOverride)
SINK = defaults(SinkConfig)

SINK_KINDS = ("webhook", "slack", "pagerduty", "alertmanager")
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
SINK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
# keys only some kinds take: key -> kinds
_KIND_KEYS = {
    "url": ("webhook", "slack", "pagerduty", "alertmanager"),
    "url_file": ("slack",),
    "signing_secret_file": ("webhook",),
    "routing_key_file": ("pagerduty",),
    "headers": ("webhook", "alertmanager"),
}


def read_alerts(top: Section) -> AlertsConfig:
    a = top.table("alerts") or Section({}, ("alerts",), top.problems)
    config = AlertsConfig(
        for_seconds=a.number("for_seconds", ALERTS["for_seconds"], ge=0),
        resolve_hold_seconds=a.number("resolve_hold_seconds", ALERTS["resolve_hold_seconds"], ge=0),
        max_retry_after_seconds=a.number(
            "max_retry_after_seconds", ALERTS["max_retry_after_seconds"], ge=0
        ),
        inhibit=a.boolean("inhibit", ALERTS["inhibit"]),
        resend_interval_seconds=a.number(
            "resend_interval_seconds", ALERTS["resend_interval_seconds"], ge=1, le=120
        ),
        group_by_tunnel=a.boolean("group_by_tunnel", ALERTS["group_by_tunnel"]),
        group_window_seconds=a.number(
            "group_window_seconds", ALERTS["group_window_seconds"], ge=0, le=3600
        ),
        overrides=_read_overrides(a),
        sinks=_read_sinks(a),
    )
    a.finish()
    return config


def _read_overrides(a: Section) -> dict[str, AlertOverride]:
    o = a.table("overrides")
    if o is None:
        return {}
    out = {}
    for name in list(o.data):
        label = name if isinstance(name, str) else str(name)
        if label not in ALERT_NAMES:
            o.known.add(label)
            o.problem(label, f"unknown alert{suggestion(label, list(ALERT_NAMES))}")
            continue
        s = o.table(label)
        if s is None:
            continue
        override = AlertOverride(
            for_seconds=s.number("for_seconds", 0.0, ge=0) if s.has("for_seconds") else None,
            severity=(s.choice("severity", "", SEVERITIES) or None) if s.has("severity") else None,
            enabled=s.boolean("enabled", OVERRIDE["enabled"]),
        )
        s.finish()
        out[label] = override
    return out


def _read_sinks(a: Section) -> tuple[SinkConfig, ...]:
    sections = a.tables("sink", "alerts.sink")
    kinds = [s.raw("kind") for s in sections]
    repeats = Counter(k for k in kinds if isinstance(k, str))
    sinks: list[SinkConfig] = []
    first_use: dict[str, int | str] = {}
    for s in sections:
        index = s.key[-1]  # the position in the file's array
        sink = _read_sink(s, index, repeats)
        if sink is None:
            continue
        if sink.name in first_use:
            s.problem(
                "name", f'"{sink.name}" is already the name of alerts.sink[{first_use[sink.name]}]'
            )
        else:
            first_use[sink.name] = index
        sinks.append(sink)
    return tuple(sinks)


def _read_sink(s: Section, index: int | str, repeats: Counter[str]) -> SinkConfig | None:
    kind = s.raw("kind")
    if kind is None:
        s.missing("kind", "one of " + ", ".join(f'"{k}"' for k in SINK_KINDS))
        return None
    if not isinstance(kind, str) or kind not in SINK_KINDS:
        listed = ", ".join(f'"{k}"' for k in SINK_KINDS)
        hint = suggestion(kind, list(SINK_KINDS)) if isinstance(kind, str) else ""
        s.problem("kind", f"expected one of {listed}, got {describe(kind)}{hint}")
        return None
    default_name = f"{kind}-{index}" if repeats[kind] > 1 else kind
    name = s.text("name", default_name)
    if not SINK_NAME.fullmatch(name):
        s.expected("name", "1-63 letters, digits, '_', '.' or '-'", name)
        name = default_name
    allowed = [key for key, kinds in _KIND_KEYS.items() if kind in kinds]
    sink = SinkConfig(
        kind=kind,
        name=name,
        url=_sink_url(s, kind),
        url_file=s.optional_path("url_file") if "url_file" in allowed else None,
        signing_secret_file=(
            s.optional_path("signing_secret_file") if "signing_secret_file" in allowed else None
        ),
        routing_key_file=(
            s.path("routing_key_file", Path(), required=True) if kind == "pagerduty" else None
        ),
        headers=(
            s.string_table("headers", HEADER_NAME, "HTTP header") if "headers" in allowed else {}
        ),
        min_severity=s.choice("min_severity", SINK["min_severity"], SEVERITIES),
        timeout_seconds=s.number("timeout_seconds", SINK["timeout_seconds"], gt=0, le=120),
    )
    elsewhere = {
        key: f'not used by kind "{kind}" (only by {", ".join(kinds)})'
        for key, kinds in _KIND_KEYS.items()
        if kind not in kinds
    }
    s.finish(elsewhere)
    return sink


def _sink_url(s: Section, kind: str) -> str | None:
    """Sink URLs often carry credentials (Slack's always does), so they are never shown."""
    if kind == "slack":
        if s.has("url") == s.has("url_file"):
            s.problem(None, "a slack sink needs exactly one of url or url_file")
        return s.optional_url("url", secret=True)
    if kind == "pagerduty":
        return s.url("url", PAGERDUTY_URL, secret=True)
    return s.url("url", "", required=True, secret=True) or None
