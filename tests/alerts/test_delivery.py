"""Delivery to real HTTP receivers on loopback: retries, give-ups, isolation between sinks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from standardwebhooks import Webhook
from structlog.testing import capture_logs

from tests.alerts.conftest import deliveries
from tests.alerts.receiver import Receiver, Reply
from tests.alerts.samples import fire_and_resolve, is_firing_post, many
from tests.waiting import await_until, free_port
from tunnelkeeper.alerts import Dispatcher
from tunnelkeeper.config.model import SinkConfig
from tunnelkeeper.metrics import Metrics

Make = Callable[..., Any]


def webhook(url: str, name: str = "hook", **kw: Any) -> SinkConfig:
    return SinkConfig(kind="webhook", name=name, url=url, **kw)


def pending(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("tunnelkeeper_alert_outbox_pending") or 0.0


async def test_webhook_delivers_signed_in_order(
    receivers: Callable[..., Receiver],
    dispatchers: Make,
    metrics: Metrics,
    whsec: tuple[str, Path],
) -> None:
    secret, secret_file = whsec
    rx = receivers()
    d: Dispatcher = await dispatchers([webhook(rx.url + "/hook", signing_secret_file=secret_file)])
    notes = many(3)
    assert d.enqueue(notes) == 6
    await counted(metrics, "hook", "delivered", 6)
    got = rx.received()
    assert [r.headers["webhook-id"] for r in got] == [n.id for n in notes]
    for r, n in zip(got, notes, strict=True):
        body = Webhook(secret).verify(r.body, r.headers)
        assert body["status"] == n.status
        assert r.headers["x-hub-signature-256"].startswith("sha256=")
    assert deliveries(metrics, "hook", "delivered") == 6
    await await_until(lambda: _true(pending(metrics) == 0), what="pending gauge 0")
    assert [row.state for row in d.outbox.rows()] == ["delivered"] * 6


async def test_500_is_retried_with_the_same_id_until_delivered(
    receivers: Callable[..., Receiver], dispatchers: Make, metrics: Metrics
) -> None:
    rx = receivers()
    rx.script(Reply(500, b"boom"), Reply(503), Reply(200))
    d = await dispatchers([webhook(rx.url)])
    fired, resolved = fire_and_resolve()
    d.enqueue([fired, resolved])
    await counted(metrics, "hook", "delivered", 2)
    ids = [r.headers["webhook-id"] for r in rx.received()]
    assert ids == [fired.id, fired.id, fired.id, resolved.id]
    assert deliveries(metrics, "hook", "retry") == 2
    assert deliveries(metrics, "hook", "delivered") == 2
    first = d.outbox.rows()[0]
    assert first.state == "delivered" and first.attempts == 3
    assert first.last_error == "HTTP 503: ok"


async def test_429_retry_after_is_honoured(
    receivers: Callable[..., Receiver], dispatchers: Make, metrics: Metrics
) -> None:
    rx = receivers()
    rx.script(Reply(429, b"slow down", {"Retry-After": "1"}))
    d = await dispatchers([webhook(rx.url)])
    fired, _ = fire_and_resolve()
    d.enqueue([fired])
    await counted(metrics, "hook", "delivered", 1)
    first, second = rx.received()
    assert second.at - first.at >= 1.0  # never before Retry-After (backoff alone is <= 0.1 s)
    assert deliveries(metrics, "hook", "retry") == 1
    assert deliveries(metrics, "hook", "delivered") == 1


async def test_400_is_given_up_with_its_reason_and_the_queue_moves_on(
    receivers: Callable[..., Receiver], dispatchers: Make, metrics: Metrics
) -> None:
    rx = receivers()
    rx.script(Reply(400, b"invalid_payload"))
    d = await dispatchers([webhook(rx.url)])
    notes = many(2)
    d.enqueue(notes)
    await counted(metrics, "hook", "delivered", 3)
    assert [r.headers["webhook-id"] for r in rx.received()] == [n.id for n in notes]
    rows = d.outbox.rows()
    assert rows[0].state == "failed"
    assert rows[0].give_up_reason == "HTTP 400: invalid_payload"
    assert [r.state for r in rows[1:]] == ["delivered"] * 3
    assert deliveries(metrics, "hook", "failed") == 1
    assert deliveries(metrics, "hook", "retry") == 0


async def test_receiver_down_then_back(
    receivers: Callable[..., Receiver], dispatchers: Make, metrics: Metrics
) -> None:
    port = free_port()
    d = await dispatchers([webhook(f"http://127.0.0.1:{port}/hook")])
    fired, resolved = fire_and_resolve()
    d.enqueue([fired, resolved])
    await await_until(lambda: _true(deliveries(metrics, "hook", "retry") >= 3), what="retries")
    row = d.outbox.rows()[0]
    assert row.state == "pending" and row.attempts >= 3 and row.last_error
    rx = receivers(port)
    await counted(metrics, "hook", "delivered", 2, timeout=15)
    assert list(dict.fromkeys(r.headers["webhook-id"] for r in rx.received())) == [
        fired.id,
        resolved.id,
    ]


async def test_slow_sink_does_not_delay_another_sink(
    receivers: Callable[..., Receiver], dispatchers: Make, metrics: Metrics
) -> None:
    slow, fast = receivers(), receivers()
    slow.default = Reply(200, delay_seconds=30)
    d = await dispatchers(
        [webhook(slow.url, "slow", timeout_seconds=60), webhook(fast.url, "fast")]
    )
    notes = many(2)
    d.enqueue(notes)
    await counted(metrics, "fast", "delivered", 4)
    # the slow sink got its first request and is still waiting for the answer
    assert len(slow.received()) == 1 and slow.completed == 0
    assert deliveries(metrics, "fast", "delivered") == 4
    assert deliveries(metrics, "slow", "delivered") == 0
    assert d.outbox.pending_count("slow") == 4


async def test_severity_routing(
    receivers: Callable[..., Receiver], dispatchers: Make, metrics: Metrics
) -> None:
    rx_all, rx_critical = receivers(), receivers()
    d = await dispatchers(
        [webhook(rx_all.url, "all"), webhook(rx_critical.url, "pager", min_severity="critical")]
    )
    info = fire_and_resolve("CloudflaredOutdated", {"tunnel": "portal"})
    critical = fire_and_resolve("TunnelDown", {"tunnel": "portal"})
    assert d.enqueue([info[0], critical[0]]) == 3
    await counted(metrics, "all", "delivered", 2)
    await counted(metrics, "pager", "delivered", 1)
    (paged,) = rx_critical.received()
    assert paged.json()["commonLabels"]["alertname"] == "TunnelDown"


async def test_redirect_is_not_followed(
    receivers: Callable[..., Receiver], dispatchers: Make, metrics: Metrics
) -> None:
    target, rx = receivers(), receivers()
    rx.script(Reply(302, b"", {"Location": target.url + "/elsewhere"}))
    d = await dispatchers([webhook(rx.url)])
    d.enqueue([fire_and_resolve()[0]])
    await counted(metrics, "hook", "delivered", 1)
    assert target.received() == []
    assert deliveries(metrics, "hook", "retry") == 1
    assert deliveries(metrics, "hook", "delivered") == 1


async def test_slack_and_pagerduty_shapes_and_secret_hygiene(
    tmp_path: Path, receivers: Callable[..., Receiver], dispatchers: Make, metrics: Metrics
) -> None:
    slack_rx, pd_rx = receivers(), receivers()
    slack_url = f"{slack_rx.url}/services/T0001/B0001/s3cr3tPathToken"
    (tmp_path / "slack.url").write_text(slack_url + "\n")
    routing_key = "R0uting" + "k" * 25
    (tmp_path / "pd.key").write_text(routing_key)
    # Slack echoes the URL in its error (worst case): it must not reach logs or the outbox
    slack_rx.script(Reply(404, f"no_team {slack_url}".encode()))
    pd_rx.default = Reply(202, b'{"status":"success"}')
    with capture_logs() as logs:
        d = await dispatchers(
            [
                SinkConfig(kind="slack", name="chat", url_file=tmp_path / "slack.url"),
                SinkConfig(
                    kind="pagerduty",
                    name="pd",
                    url=pd_rx.url + "/v2/enqueue",
                    routing_key_file=tmp_path / "pd.key",
                ),
            ]
        )
        fired, resolved = fire_and_resolve()
        d.enqueue([fired, resolved])
        await counted(metrics, "chat", "delivered", 1)
        await counted(metrics, "pd", "delivered", 2)
    assert slack_rx.received()[1].json()["text"].startswith(":large_green_circle: RESOLVED")
    trigger, resolve = (r.json() for r in pd_rx.received())
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"]
    failed = d.outbox.rows("chat")[0]
    assert failed.state == "failed" and failed.give_up_reason.startswith("HTTP 404: no_team")
    dumped = json.dumps(logs, default=str) + repr(d.outbox.rows()) + repr(d.sink_status())
    assert "s3cr3tPathToken" not in dumped
    assert routing_key not in dumped.replace(json.dumps(trigger), "")


async def test_alertmanager_sink_resends_while_firing_and_after_resolve(
    receivers: Callable[..., Receiver], dispatchers: Make, metrics: Metrics
) -> None:
    am = receivers()
    d = await dispatchers(
        [SinkConfig(kind="alertmanager", name="am", url=am.url)],
        resend_interval_seconds=0.2,
        resolved_resend_seconds=1.0,
    )
    fired, resolved = fire_and_resolve()
    d.enqueue([fired])
    await await_until(lambda: _true(am.completed >= 3), what="re-sends while firing")
    assert all(is_firing_post(r.json()[0]) for r in am.received("/api/v2/alerts"))
    d.enqueue([resolved])
    await await_until(
        lambda: _true(sum(not is_firing_post(r.json()[0]) for r in am.received()) >= 3),
        what="resolved re-sends",
    )
    # re-sends of the resolved form stop after the window; nothing firing is sent after resolve
    await await_until(lambda: _true(_quiet(am)), timeout=10, what="re-sends stop")
    bodies = [r.json()[0] for r in am.received()]
    first_resolved = next(i for i, b in enumerate(bodies) if not is_firing_post(b))
    assert not any(is_firing_post(b) for b in bodies[first_resolved:])
    assert deliveries(metrics, "am", "delivered") == 2  # re-sends are not counted


async def test_a_fleet_wide_alert_is_reposted_only_when_a_fresh_poll_confirms_it(
    receivers: Callable[..., Receiver], dispatchers: Make, metrics: Metrics
) -> None:
    """Another host may have resolved it since: a timer re-post would open it again."""
    am = receivers()
    d = await dispatchers(
        [SinkConfig(kind="alertmanager", name="am", url=am.url)], resend_interval_seconds=0.2
    )
    fleet, fleet_resolved = fire_and_resolve("FleetConnectorsLow", {"tunnel": "portal"})
    local, _ = fire_and_resolve("TunnelDown", {"tunnel": "admin"})
    assert fleet.alert.is_fleet_wide and "host" not in fleet.alert.labels
    d.enqueue([fleet, local])

    def posts(name: str) -> int:
        return sum(
            1
            for r in am.received("/api/v2/alerts")
            for a in r.json()
            if a["labels"]["alertname"] == name
        )

    # the local alert is re-posted on its timer, several times; the fleet one never
    await await_until(lambda: _true(posts("TunnelDown") >= 5), what="timer re-sends")
    assert posts("FleetConnectorsLow") == 1
    d.confirm({fleet.alert.fingerprint})  # a poll still shows it
    await await_until(lambda: _true(posts("FleetConnectorsLow") == 2), what="the confirmed re-post")
    d.confirm({"someone-else"})
    await await_until(lambda: _true(posts("TunnelDown") >= 10), what="more timer re-sends")
    assert posts("FleetConnectorsLow") == 2
    # its resolve is delivered once and never re-posted (another host may be firing it anew)
    d.enqueue([fleet_resolved])
    await await_until(lambda: _true(posts("FleetConnectorsLow") == 3), what="the resolve")
    local_before = posts("TunnelDown")
    await await_until(lambda: _true(posts("TunnelDown") >= local_before + 5), what="timer")
    assert posts("FleetConnectorsLow") == 3


_seen: dict[int, int] = {}


def _quiet(rx: Receiver) -> bool:
    """True once no new request arrived since the previous call (polled every 0.5 s)."""
    count = len(rx.received())
    before = _seen.get(id(rx))
    _seen[id(rx)] = count
    return before == count


async def _true(value: bool) -> bool:
    return value


async def counted(metrics: Metrics, sink: str, result: str, n: int, timeout: float = 10.0) -> None:
    """Wait until the sink's delivery counter for ``result`` reaches ``n``."""
    await await_until(
        lambda: _true(deliveries(metrics, sink, result) >= n),
        timeout=timeout,
        what=f"{n} x {result} on {sink}",
    )
