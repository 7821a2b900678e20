"""The daemon's exposition, read back with prometheus_client's parser (the maintained reference)
and written the way prometheus_client writes the same metrics."""

from __future__ import annotations

import math
import threading
from typing import Any

import prometheus_client
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tunnelkeeper.metrics import LATENCY_BUCKETS, Metrics
from tunnelkeeper.promtext import Histogram, Registry


def parsed(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples by (name, labels); prometheus_client's own ``_created`` series left out (the
    daemon never wrote them: it ran with PROMETHEUS_DISABLE_CREATED_SERIES)."""
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@given(
    st.lists(
        st.tuples(st.text(max_size=20), st.text(max_size=20), st.floats(allow_nan=True)),
        max_size=20,
    )
)
def test_any_label_values_and_values_read_back_as_set(rows: list[tuple[str, str, float]]) -> None:
    r = Registry()
    g = r.gauge("t_gauge", 'help with \\ and\nnewline and "quotes"', ["tunnel", "colo"])
    want: dict[tuple[str, str], float] = {}
    for tunnel, colo, value in rows:
        g.labels(tunnel, colo).set(value)
        want[(tunnel, colo)] = value
    got = parsed(r.exposition())
    assert len(got) == len(want)
    for (tunnel, colo), value in want.items():
        assert same(got[("t_gauge", (("colo", colo), ("tunnel", tunnel)))], value)


def test_a_changed_value_is_what_the_next_scrape_shows() -> None:
    r = Registry()
    g = r.gauge("t_up", "up", ["slot"])
    c = r.counter("t_restarts", "restarts", ["slot"])
    g.labels("0").set(1)
    c.labels("0").inc()
    assert parsed(r.exposition())[("t_up", (("slot", "0"),))] == 1.0
    for value in (0, 1, 1, 7.5, float("inf")):
        g.labels("0").set(value)
        c.labels(slot="0").inc(2)
        got = parsed(r.exposition())
        assert got[("t_up", (("slot", "0"),))] == value
    assert got[("t_restarts_total", (("slot", "0"),))] == 11.0


def test_counters_only_go_up_and_removed_series_disappear() -> None:
    r = Registry()
    c = r.counter("t_errors", "errors", ["tunnel", "reason"])
    with pytest.raises(ValueError):
        c.labels("a", "x").inc(-1)
    with pytest.raises(TypeError):
        c.labels("a", "x").set(3)
    with pytest.raises(ValueError):
        c.labels("only-one")
    c.labels("a", "x").inc()
    c.labels("a", "y")
    c.remove("a", "x")
    with pytest.raises(KeyError):
        c.remove("a", "x")
    assert parsed(r.exposition()) == {("t_errors_total", (("reason", "y"), ("tunnel", "a"))): 0.0}
    with pytest.raises(ValueError):
        r.gauge("t_errors_total", "a second family of the same sample name")


def test_histogram_matches_prometheus_client_for_the_same_observations() -> None:
    observations = [0.0, 0.001, 0.0010001, 0.02, 0.3, 2.5, 2.6, 100.0, -1.0]
    r = Registry()
    ours = r.histogram("t_seconds", "latency", LATENCY_BUCKETS)
    reference = prometheus_client.CollectorRegistry()
    theirs = prometheus_client.Histogram(
        "t_seconds", "latency", buckets=LATENCY_BUCKETS, registry=reference
    )
    for value in observations:
        ours.observe(value)
        theirs.observe(value)
    assert parsed(r.exposition()) == parsed(prometheus_client.generate_latest(reference))


def test_the_daemons_metrics_are_written_as_prometheus_client_wrote_them() -> None:
    """Same names, types, help texts and samples as the prometheus_client registry the daemon
    used before: a dashboard or rule written against either reads the other."""
    m = Metrics()
    reference = prometheus_client.CollectorRegistry()
    mirrored: dict[str, Any] = {}
    for family in m.registry._families:
        doc = family.header.split("\n")[0].split(" ", 3)[3]
        name = family.name
        if isinstance(family, Histogram):
            mirrored[name] = prometheus_client.Histogram(
                name, doc, buckets=family.bounds, registry=reference
            )
        else:
            cls = prometheus_client.Counter if family.kind == "counter" else prometheus_client.Gauge
            mirrored[name] = cls(
                name.removesuffix("_total"), doc, family.labelnames, registry=reference
            )
    m.replica_up.labels("portal", "0").set(1)
    mirrored["tunnelkeeper_replica_up"].labels("portal", "0").set(1)
    m.replica_restarts.labels("portal", "0", "exited").inc()
    mirrored["tunnelkeeper_replica_restarts_total"].labels("portal", "0", "exited").inc()
    m.alert_outbox_pending.set(3)
    mirrored["tunnelkeeper_alert_outbox_pending"].set(3)
    m.loop_lag.observe(0.004)
    mirrored["tunnelkeeper_loop_lag_seconds"].observe(0.004)
    for task in ("loop", "converge", "probe", "alert_worker", "token_feed", "fleet", "loop_lag"):
        mirrored["tunnelkeeper_task_restarts_total"].labels(task)

    def families(text: bytes) -> list[tuple[str, str, str]]:
        return [
            (f.name, f.type, f.documentation)
            for f in text_string_to_metric_families(text.decode())
            if not f.name.endswith("_created")
        ]

    theirs = prometheus_client.generate_latest(reference)
    assert families(m.exposition()) == families(theirs)
    assert parsed(m.exposition()) == parsed(theirs)


def test_scrapes_on_another_thread_while_series_come_and_go() -> None:
    r = Registry()
    g = r.gauge("t_state", "state", ["slot", "state"])
    stop = threading.Event()
    errors: list[BaseException] = []
    scrapes = 0

    def scrape() -> None:
        nonlocal scrapes
        try:
            while not stop.is_set():
                parsed(r.exposition())
                scrapes += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=scrape)
    t.start()
    try:
        for i in range(20_000):
            slot = str(i % 50)
            g.labels(slot, "ready").set(i)
            if i % 3 == 0:
                g.remove(slot, "ready")
            if scrapes > 20 and i > 5_000:
                break
    finally:
        stop.set()
        t.join()
    assert not errors
    assert scrapes > 0
    final = parsed(r.exposition())
    for (_, labels), value in final.items():
        assert value == g.labels(*(v for _, v in labels)).value
