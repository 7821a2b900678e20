"""[alerts]: hold time, per-alert overrides and [[alerts.sink]]."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tunnelkeeper.config.load import parse_config
from tunnelkeeper.config.model import AlertOverride, AlertsConfig

Messages = Callable[[str], dict[str, str]]


def alerts(text: str, minimal: str) -> AlertsConfig:
    return parse_config(minimal + text, Path("c.toml")).alerts


def test_overrides(minimal: str) -> None:
    text = """
[alerts]
for_seconds = 0
[alerts.overrides.TunnelDown]
for_seconds = 2.5
severity = "critical"
[alerts.overrides.CloudflaredOutdated]
enabled = false
"""
    config = alerts(text, minimal)
    assert config.for_seconds == 0.0
    assert config.overrides == {
        "TunnelDown": AlertOverride(for_seconds=2.5, severity="critical"),
        "CloudflaredOutdated": AlertOverride(enabled=False),
    }


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("[alerts]\nfor_seconds = -1", "alerts.for_seconds", "a number >= 0, got -1"),
        (
            "[alerts.overrides.ReplicaDwn]\nenabled = false",
            "alerts.overrides.ReplicaDwn",
            'unknown alert (did you mean "ReplicaDown"?)',
        ),
        (
            "[alerts.overrides.TunnelDown]\nfor_seconds = -2",
            "alerts.overrides.TunnelDown.for_seconds",
            "a number >= 0, got -2",
        ),
        (
            '[alerts.overrides.TunnelDown]\nseverity = "page"',
            "alerts.overrides.TunnelDown.severity",
            'expected one of "info", "warning", "critical", got "page"',
        ),
        (
            '[alerts.overrides.TunnelDown]\nenabled = "no"',
            "alerts.overrides.TunnelDown.enabled",
            'expected true or false, got "no"',
        ),
        (
            "[alerts.overrides.TunnelDown]\nfor = 1",
            "alerts.overrides.TunnelDown.for",
            "unknown key",
        ),
        ("[alerts]\noverrides = 3", "alerts.overrides", "expected a table, got 3"),
        ("[alerts]\nsinks = []", "alerts.sinks", 'unknown key (did you mean "sink"?)'),
    ],
)
def test_alert_rules(
    messages_of: Messages, minimal: str, text: str, key: str, message: str
) -> None:
    messages = messages_of(minimal + text + "\n")
    assert list(messages) == [key]
    assert message in messages[key]


def test_sink_names_default_to_kind_and_kind_index_when_repeated(minimal: str) -> None:
    text = """
[[alerts.sink]]
kind = "webhook"
url = "https://a.example/hook"
[[alerts.sink]]
kind = "slack"
url = "https://hooks.slack.com/services/T/B/x"
[[alerts.sink]]
kind = "webhook"
url = "https://b.example/hook"
headers = { Authorization = "Bearer abc", "X-Team" = "ops" }
[[alerts.sink]]
kind = "pagerduty"
routing_key_file = "/etc/tk/pd.key"
min_severity = "critical"
timeout_seconds = 120
"""
    sinks = alerts(text, minimal).sinks
    assert [s.name for s in sinks] == ["webhook-0", "slack", "webhook-2", "pagerduty"]
    assert sinks[2].headers == {"Authorization": "Bearer abc", "X-Team": "ops"}
    assert sinks[3].url == "https://events.pagerduty.com/v2/enqueue"
    assert sinks[3].routing_key_file == Path("/etc/tk/pd.key")
    assert (sinks[3].min_severity, sinks[3].timeout_seconds) == ("critical", 120.0)


def sink(body: str) -> str:
    return f"\n[[alerts.sink]]\n{body}\n"


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ('url = "https://x/"', "alerts.sink[0].kind", "required key missing"),
        (
            'kind = "email"',
            "alerts.sink[0].kind",
            'one of "webhook", "slack", "pagerduty", "alertmanager", got "email"',
        ),
        ('kind = "webhok"\nurl = "https://x/"', "alerts.sink[0].kind", '(did you mean "webhook"?)'),
        (
            'kind = "webhook"',
            "alerts.sink[0].url",
            "required key missing (expected an http(s) URL)",
        ),
        ('kind = "alertmanager"', "alerts.sink[0].url", "required key missing"),
        (
            'kind = "webhook"\nurl = "ftp://x/"',
            "alerts.sink[0].url",
            "expected an http(s) URL, got a string",
        ),
        ('kind = "slack"', "alerts.sink[0]", "exactly one of url or url_file"),
        (
            'kind = "slack"\nurl = "https://h/"\nurl_file = "/u"',
            "alerts.sink[0]",
            "exactly one of url or url_file",
        ),
        ('kind = "slack"\nurl_file = "u"', "alerts.sink[0].url_file", "absolute path"),
        ('kind = "pagerduty"', "alerts.sink[0].routing_key_file", "required key missing"),
        (
            'kind = "slack"\nurl = "https://h/"\nsigning_secret_file = "/s"',
            "alerts.sink[0].signing_secret_file",
            'not used by kind "slack" (only by webhook)',
        ),
        (
            'kind = "pagerduty"\nrouting_key_file = "/k"\nheaders = {}',
            "alerts.sink[0].headers",
            'not used by kind "pagerduty" (only by webhook, alertmanager)',
        ),
        (
            'kind = "webhook"\nurl = "https://h/"\nheaders = { "Bad Header" = "x" }',
            'alerts.sink[0].headers."Bad Header"',
            "not a valid HTTP header name",
        ),
        (
            'kind = "webhook"\nurl = "https://h/"\nheaders = { X = "a\\nb" }',
            "alerts.sink[0].headers.X",
            "expected a single-line string, got a string",
        ),
        (
            'kind = "webhook"\nurl = "https://h/"\nmin_severity = "high"',
            "alerts.sink[0].min_severity",
            'got "high"',
        ),
        (
            'kind = "webhook"\nurl = "https://h/"\ntimeout_seconds = 121',
            "alerts.sink[0].timeout_seconds",
            "> 0 and <= 120",
        ),
        (
            'kind = "webhook"\nurl = "https://h/"\nname = "my sink"',
            "alerts.sink[0].name",
            'got "my sink"',
        ),
        (
            'kind = "webhook"\nurl = "https://h/"\nsecret = "x"',
            "alerts.sink[0].secret",
            "unknown key",
        ),
    ],
)
def test_sink_rules(messages_of: Messages, minimal: str, body: str, key: str, message: str) -> None:
    messages = messages_of(minimal + sink(body))
    assert list(messages) == [key]
    assert message in messages[key]


def test_sink_urls_and_header_values_are_never_shown(messages_of: Messages, minimal: str) -> None:
    body = 'kind = "slack"\nurl = "hooks.slack.com/services/T0/B0/SECRETPART"'
    body2 = (
        'kind = "webhook"\nurl = "https://h/"\nheaders = { Authorization = ["Bearer SECRETPART"] }'
    )
    messages = messages_of(minimal + sink(body) + sink(body2))
    assert set(messages) == {"alerts.sink[0].url", "alerts.sink[1].headers.Authorization"}
    assert "SECRETPART" not in str(messages)


def test_sink_names_must_be_unique(messages_of: Messages, minimal: str) -> None:
    text = sink('kind = "webhook"\nurl = "https://a/"\nname = "slack"') + sink(
        'kind = "slack"\nurl_file = "/u"'
    )
    assert messages_of(minimal + text) == {
        "alerts.sink[1].name": '"slack" is already the name of alerts.sink[0]'
    }


def test_sink_must_be_an_array_of_tables(messages_of: Messages, minimal: str) -> None:
    messages = messages_of(minimal + '[alerts.sink]\nkind = "webhook"\n')
    assert messages == {"alerts.sink": "expected an array of tables ([[alerts.sink]]), got a table"}


def test_indexes_are_positions_in_the_file_even_after_a_bad_entry(
    messages_of: Messages, minimal: str
) -> None:
    text = (
        minimal
        + '[alerts]\nsink = [1, { kind = "webhook", url = "https://a/" },'
        + ' { kind = "webhook", url = "https://b/", name = "webhook-1" }]\n'
    )
    assert messages_of(text) == {
        "alerts.sink[0]": "expected a table, got 1",
        "alerts.sink[2].name": '"webhook-1" is already the name of alerts.sink[1]',
    }
