"""Faults from cloudflared's real failure modes (shared/reference/cloudflared.md):

* a refused edge: every replica floods its log at the real binary's pace (three JSON lines per
  dial attempt, ~17,000 lines a second each in cloudflared-sim): the daemon stays responsive,
  pages with the cause, keeps its own log small, and drains and exits on SIGTERM;
* a DNS outage (no edge discovery): every replica exits about 0.6 s after start, in a loop: the
  daemon backs off instead of restarting in a storm, and the page names the DNS failure.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.alerts.receiver import Receiver
from tests.faults.conftest import (
    alerts_named,
    alerts_toml,
    events,
    fault_config,
    metric,
    webhook_sink,
)
from tests.harness import Daemon, Sim
from tests.servers import assert_no_replicas_left
from tests.waiting import wait_until

pytestmark = pytest.mark.system


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def paged_daemon(
    tmp_path: Path,
    sim: Sim,
    hook: Receiver,
    whsec: tuple[str, Path],
    run_daemon: Callable[..., Daemon],
    *,
    args: str,
    for_seconds: float = 2,
) -> Daemon:
    """The daemon paging ``hook``, its replicas started with ``args`` (a TOML list)."""
    sink = webhook_sink(f"{hook.url}/hook", whsec[1], name="oncall")
    cfg = fault_config(tmp_path, sim, extra=alerts_toml(sink, for_seconds=for_seconds))
    cfg.write_text(cfg.read_text().replace(f'args = ["--edge", "{sim.edge}"]', f"args = {args}"))
    return run_daemon(cfg)


def first_page(hook: Receiver, alertname: str) -> dict[str, object]:
    fired = wait_until(
        lambda: alerts_named(hook, alertname, "firing"), timeout=30, what=f"{alertname} paged"
    )
    return dict(fired[0])


def test_a_refused_edge_floods_and_the_daemon_stays_cheap_truthful_and_stoppable(
    tmp_path: Path,
    sim: Sim,
    receivers: Callable[..., Receiver],
    whsec: tuple[str, Path],
    run_daemon: Callable[..., Daemon],
) -> None:
    hook = receivers()
    refused = f'["--edge", "127.0.0.1:{closed_port()}"]'
    d = paged_daemon(tmp_path, sim, hook, whsec, run_daemon, args=refused)
    down = first_page(hook, "TunnelDown")
    assert "connection refused" in down["annotations"]["cause"]  # type: ignore[index]
    # The replicas really flood (megabytes of it left unread: only its latest lines are looked
    # at), and the daemon relays next to nothing of it.
    wait_until(
        lambda: metric(d, "tunnelkeeper_child_log_unread_bytes_total") > 2_000_000,
        timeout=30,
        what="a flood left unread",
    )
    assert metric(d, "tunnelkeeper_child_log_lines_skipped_total") > 1000
    assert events(d, "cloudflared_logged") < 200
    assert 'tunnelkeeper_loop_lag_seconds_bucket{le="0.1"}' in d.metrics()
    assert all(line.startswith("{") for line in d.output().splitlines() if line)  # JSON only
    # SIGTERM in the middle of it: every replica drained, the daemon gone, within the grace
    # period (5 s in this config) plus 2 s; no replica left behind.
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=5 + 2) == 0  # within the grace period + 2 s (issue 13)
    assert_no_replicas_left(tmp_path)


def test_a_dns_outage_makes_replicas_exit_in_a_loop_backed_off_and_paged_with_the_cause(
    tmp_path: Path,
    sim: Sim,
    receivers: Callable[..., Receiver],
    whsec: tuple[str, Path],
    run_daemon: Callable[..., Daemon],
) -> None:
    hook = receivers()
    d = paged_daemon(tmp_path, sim, hook, whsec, run_daemon, args="[]")  # no --edge: DNS
    started = time.monotonic()
    cause = str(first_page(hook, "TunnelDown")["annotations"]["cause"])  # type: ignore[index]
    assert "edge discovery" in cause and "DNS query failed" in cause
    wait_until(lambda: time.monotonic() - started >= 15, timeout=20, interval=1.0)
    spawned = events(d, "replica_spawned")
    # A replica lives ~0.6 s: without backoff 2 slots would start ~50 times in 15 s.
    assert spawned <= 20, spawned
    assert all(
        t["edge_outage_suspected"] or any(s["crash_looping"] for s in t["slots"])
        for t in d.status()["tunnels"]
    )
