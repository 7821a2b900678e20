"""Fault: webhook receivers that are slow (30 s responses), throttle (429 + Retry-After) or fail
(500), during a real edge partition, beside one healthy receiver.

Supervision and the healthy receiver are not held up by the others: the partition is detected,
the replica replaced and the healthy receiver paged (fire and resolve) while the slow one has not
completed a single response. Each bad receiver gets every page once it recovers, in order, with
the same webhook-id on every attempt. Nothing is lost and the outbox drains.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from tests.alerts.receiver import Receiver, Reply
from tests.faults.conftest import alerts_toml, fault_config, metric, pages, webhook_sink
from tests.harness import Daemon, Load, Sim
from tests.waiting import wait_until

pytestmark = pytest.mark.system
RETRY_AFTER = 3


def ids(receiver: Receiver) -> list[str]:
    return [p.webhook_id for p in pages(receiver)]


def same_pages(receiver: Receiver, expected: list[str]) -> Callable[[], bool]:
    return lambda: ids(receiver) == expected


def test_slow_throttling_and_failing_receivers_delay_only_themselves(
    tmp_path: Path,
    sim: Sim,
    receivers: Callable[..., Receiver],
    whsec: tuple[str, Path],
    run_daemon: Callable[..., Daemon],
) -> None:
    healthy, slow, throttled, broken = (receivers() for _ in range(4))
    slow.default = Reply(delay_seconds=30)
    throttled.script(Reply(429, b"slow down", {"Retry-After": str(RETRY_AFTER)}))
    broken.script(*[Reply(500, b"internal error")] * 3)
    sinks = [
        webhook_sink(f"{healthy.url}/hook", whsec[1], name="healthy"),
        webhook_sink(f"{slow.url}/hook", whsec[1], name="slow", timeout_seconds=5),
        webhook_sink(f"{throttled.url}/hook", whsec[1], name="throttled"),
        webhook_sink(f"{broken.url}/hook", whsec[1], name="broken"),
    ]
    cfg = fault_config(
        tmp_path,
        sim,
        tunnels={"portal": {"unhealthy_after_seconds": 3}},
        extra=alerts_toml(*sinks),
    )
    d = run_daemon(cfg)
    victim = d.wait_ready("portal", 2)[1]
    with Load(sim, "portal", rate_per_second=20) as load:
        wait_until(lambda: load.results["ok"] >= 10, timeout=10, what="load flowing")
        partitioned_at = time.time()
        sim.fault("partition", connector_id=victim["connector_id"])
        # Detection and replacement go on while the slow receiver holds its first request.
        wait_until(
            lambda: victim["pid"] not in {r["pid"] for r in d.wait_ready("portal", 2)},
            timeout=30,
            what="partitioned replica replaced",
        )

        def settled() -> bool:
            status = d.status()
            return not status["alerts_firing"] and status["alerts"]["sinks"][0]["pending"] == 0

        wait_until(settled, timeout=30, what="healthy receiver paged: every fire and resolve")
        assert slow.received("/hook"), "the slow receiver was never tried"
        assert slow.completed == 0  # no slow response finished, yet nothing else waited
        expected = ids(healthy)
        assert [p.status for p in pages(healthy)].count("resolved") >= 1
        assert pages(healthy)[0].status == "firing"
        assert any(
            a["labels"]["alertname"] == "ReplicaNoEdgeConnections"
            for p in pages(healthy)
            for a in p.alerts
        )
        assert d.status()["alerts"]["sinks"][1]["pending"] >= 1
        # The slow receiver recovers; every receiver ends with the same pages in the same order.
        slow.default = Reply()
        for r in (slow, throttled, broken):
            wait_until(same_pages(r, expected), timeout=60, what="late pages, in order")
        wait_until(
            lambda: metric(d, "tunnelkeeper_alert_outbox_pending") == 0,
            timeout=30,
            what="outbox drained",
        )
    # Cutting the victim's connections loses the one request in flight on them, if any (the
    # load sends one at a time), as a real network cut would; nothing else may fail.
    load.assert_only_cut_off(partitioned_at)
    # Retries carry the same webhook-id: the first page was tried more than once on each bad
    # receiver, and only ever under its own id.
    first = expected[0]
    for r, tries in ((slow, 2), (throttled, 2), (broken, 4)):
        attempts = [x for x in r.received("/hook") if x.headers["webhook-id"] == first]
        assert len(attempts) >= tries, (r.url, len(attempts))
    # Retry-After was honoured (a lower bound, which a slow machine cannot break).
    t429 = [x.at for x in throttled.received("/hook") if x.headers["webhook-id"] == first]
    assert t429[1] - t429[0] >= RETRY_AFTER - 0.1
    for sink in ("slow", "throttled", "broken"):
        assert metric(d, "tunnelkeeper_alert_deliveries_total", sink=sink, result="retry") >= 1
        assert metric(d, "tunnelkeeper_alert_deliveries_total", sink=sink, result="failed") == 0
    hook = Webhook(whsec[0])
    for r in (healthy, slow, throttled, broken):
        for x in r.received("/hook"):
            hook.verify(
                x.body,
                {k: x.headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")},
            )
