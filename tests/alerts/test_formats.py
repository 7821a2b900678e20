"""Sink payloads, signatures and the retry policy: pure functions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.alerts.samples import fire_and_resolve, is_firing_post
from tunnelkeeper.alerts import formats
from tunnelkeeper.alerts.retry import (
    Outcome,
    backoff_seconds,
    classify,
    next_delay_seconds,
    retry_after_seconds,
)
from tunnelkeeper.alerts.signing import SigningKeyError, whsec_key
from tunnelkeeper.alerts.sinks import SinkError, build_request, sink_problems
from tunnelkeeper.config.model import SinkConfig


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def test_webhook_body_is_alertmanager_v4() -> None:
    fired, resolved = fire_and_resolve()
    body = formats.webhook_payload(fired, receiver="ops")
    assert body["version"] == "4"
    assert body["status"] == "firing"
    assert body["receiver"] == "ops"
    assert body["truncatedAlerts"] == 0
    assert body["commonLabels"] == dict(fired.alert.labels)
    (alert,) = body["alerts"]
    assert alert["status"] == "firing"
    assert alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert alert["startsAt"] == "2026-01-10T09:00:12.000Z"
    assert alert["fingerprint"] == fired.alert.fingerprint
    assert set(alert) == {
        "status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"
    }  # fmt: skip
    done = formats.webhook_payload(resolved, receiver="ops")
    assert done["status"] == "resolved"
    assert done["groupKey"] == body["groupKey"]
    assert done["alerts"][0]["endsAt"] == "2026-01-10T09:00:20.000Z"


def test_slack_text_is_readable() -> None:
    fired, resolved = fire_and_resolve()
    text = formats.slack_payload(fired)["text"]
    assert text.startswith(
        ":red_circle: FIRING ReplicaNoEdgeConnections portal/1 on origin-01 — replica 1 of portal "
        "is alive but has 0 edge connections (for 12s)"
    )
    assert formats.slack_payload(resolved)["text"].startswith(
        ":large_green_circle: RESOLVED ReplicaNoEdgeConnections portal/1 on origin-01"
    )


def test_pagerduty_trigger_and_resolve() -> None:
    fired, resolved = fire_and_resolve()
    trigger = formats.pagerduty_payload(fired, "k" * 32)
    assert trigger["event_action"] == "trigger"
    assert trigger["routing_key"] == "k" * 32
    assert trigger["payload"]["source"] == "origin-01"
    assert trigger["payload"]["severity"] == "critical"
    assert len(trigger["payload"]["summary"]) <= 1024
    assert trigger["payload"]["custom_details"]["slot"] == "1"
    resolve = formats.pagerduty_payload(resolved, "k" * 32)
    assert resolve == {
        "routing_key": "k" * 32,
        "event_action": "resolve",
        "dedup_key": trigger["dedup_key"],
    }
    fleet, _ = fire_and_resolve("FleetConnectorsLow", {"tunnel": "portal"})
    assert formats.pagerduty_payload(fleet, "k" * 32)["payload"]["source"] == "fleet"


def test_pagerduty_summary_is_capped() -> None:
    fired, _ = fire_and_resolve(labels={"tunnel": "p" * 3000, "slot": "0"})
    assert len(formats.pagerduty_payload(fired, "k")["payload"]["summary"]) == 1024


def test_alertmanager_body_ends_firing_alerts_ahead_of_now() -> None:
    fired, resolved = fire_and_resolve()
    (a,) = formats.alertmanager_payload([fired])
    # endsAt a few re-send intervals ahead, never before startsAt: Alertmanager never has to
    # fill it in from its own clock (which may be behind ours)
    assert is_firing_post(a) and a["endsAt"] > a["startsAt"]
    assert a["labels"]["alertname"] == "ReplicaNoEdgeConnections"
    (b,) = formats.alertmanager_payload([resolved])
    assert b["endsAt"] == "2026-01-10T09:00:20.000Z"


def test_webhook_request_verifies_with_standardwebhooks(tmp_path: Path) -> None:
    secret = new_secret()
    (tmp_path / "whsec").write_text(secret + "\n")
    sink = SinkConfig(
        kind="webhook",
        name="ops",
        url="http://127.0.0.1:9/hook",
        signing_secret_file=tmp_path / "whsec",
        headers={"Authorization": "Bearer abc"},
    )
    fired, _ = fire_and_resolve()
    req = build_request(sink, [fired], datetime.now(UTC))
    assert req.headers["webhook-id"] == fired.id
    assert req.headers["Authorization"] == "Bearer abc"
    parsed = Webhook(secret).verify(req.body, dict(req.headers))
    assert parsed["alerts"][0]["labels"]["slot"] == "1"
    tampered = req.body.replace(b'"slot":"1"', b'"slot":"2"')
    assert tampered != req.body
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, dict(req.headers))
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(req.body, dict(req.headers))
    expected = hmac.new(secret.encode(), req.body, hashlib.sha256).hexdigest()
    assert req.headers["X-Hub-Signature-256"] == f"sha256={expected}"


def test_unreadable_or_bad_secret_is_a_clean_error_without_the_secret(tmp_path: Path) -> None:
    fired, _ = fire_and_resolve()
    sink = SinkConfig(
        kind="webhook", name="ops", url="http://x/", signing_secret_file=tmp_path / "missing"
    )
    with pytest.raises(SinkError, match=r"signing_secret_file .*missing"):
        build_request(sink, [fired], datetime.now(UTC))
    (tmp_path / "bad").write_text("not-a-whsec-secret-value")
    sink = SinkConfig(
        kind="webhook", name="ops", url="http://x/", signing_secret_file=tmp_path / "bad"
    )
    with pytest.raises(SinkError) as info:
        build_request(sink, [fired], datetime.now(UTC))
    assert "not-a-whsec-secret-value" not in str(info.value)
    with pytest.raises(SigningKeyError):
        whsec_key("whsec_" + base64.b64encode(b"short").decode())


def test_slack_url_file_and_pagerduty_routing_key(tmp_path: Path) -> None:
    (tmp_path / "slack").write_text("http://127.0.0.1:9/services/T/B/secret\n")
    (tmp_path / "pd").write_text("r" * 32)
    fired, _ = fire_and_resolve()
    slack = SinkConfig(kind="slack", name="chat", url_file=tmp_path / "slack")
    assert build_request(slack, [fired], datetime.now(UTC)).url.endswith("/T/B/secret")
    pd = SinkConfig(kind="pagerduty", name="pd", routing_key_file=tmp_path / "pd")
    req = build_request(pd, [fired], datetime.now(UTC))
    assert req.url == "https://events.pagerduty.com/v2/enqueue"
    assert json.loads(req.body)["routing_key"] == "r" * 32
    am = SinkConfig(kind="alertmanager", name="am", url="http://127.0.0.1:9093/")
    assert build_request(am, [fired], datetime.now(UTC)).url == (
        "http://127.0.0.1:9093/api/v2/alerts"
    )


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (202, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (301, Outcome.TRANSIENT),
        (400, Outcome.PERMANENT),
        (401, Outcome.PERMANENT),
        (404, Outcome.PERMANENT),
        (408, Outcome.TRANSIENT),
        (410, Outcome.PERMANENT),
        (429, Outcome.TRANSIENT),
        (500, Outcome.TRANSIENT),
        (503, Outcome.TRANSIENT),
    ],
)
def test_classify(status: int, outcome: Outcome) -> None:
    assert classify(status) is outcome


def test_backoff_is_capped_full_jitter() -> None:
    rng = random.Random(7)
    for failures in range(0, 40):
        for _ in range(20):
            delay = backoff_seconds(failures, rng, base=1.0, cap=300.0)
            assert 0.0 <= delay <= min(300.0, 2.0**failures)
    samples = [backoff_seconds(10, rng) for _ in range(200)]
    assert max(samples) > 150 and min(samples) < 150  # jittered across the range


def test_retry_after_seconds_and_http_date() -> None:
    now = datetime(2026, 1, 10, 9, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert retry_after_seconds("garbage", now) is None
    assert retry_after_seconds(None, now) is None
    assert retry_after_seconds("-5", now) == 0.0
    assert retry_after_seconds("99999999", now) == 3600.0
    assert retry_after_seconds("nan", now) is None
    rng = random.Random(1)
    assert all(next_delay_seconds(1, 20.0, rng) >= 20.0 for _ in range(50))


def test_sink_problems_name_the_key_not_the_secret(tmp_path: Path) -> None:
    (tmp_path / "bad").write_text("whsec_notbase64!!")
    (tmp_path / "good").write_text("whsec_" + base64.b64encode(os.urandom(24)).decode())
    bad = SinkConfig(
        kind="webhook", name="h", url="http://x/", signing_secret_file=tmp_path / "bad"
    )
    (problem,) = sink_problems(bad)
    assert problem.startswith("signing_secret_file ") and "notbase64" not in problem
    good = SinkConfig(
        kind="webhook", name="h", url="http://x/", signing_secret_file=tmp_path / "good"
    )
    assert sink_problems(good) == []
    pd = SinkConfig(kind="pagerduty", name="pd", routing_key_file=tmp_path / "missing")
    assert sink_problems(pd) == [
        f"routing_key_file {tmp_path / 'missing'}: No such file or directory"
    ]
    slack = SinkConfig(kind="slack", name="s", url_file=tmp_path / "nope")
    assert sink_problems(slack)[0].startswith("url_file ")
