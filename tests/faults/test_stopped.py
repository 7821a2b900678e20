"""Fault: a replica stopped by a signal (SIGSTOP, as a debugger or a frozen process would be).

It serves nothing, and the daemon knows at once rather than after a probe interval and
``unresponsive_after_seconds`` of silence: from the kernel (SIGCHLD) for its own children, from
``/proc`` at the first unanswered probe for a replica adopted from a previous daemon. Both tests
set the slow path far beyond their deadlines, so only the fast path can pass them.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.faults.conftest import events, fault_config
from tests.harness import Daemon, Sim
from tests.waiting import wait_until

pytestmark = pytest.mark.system


def config(tmp_path: Path, sim: Sim, *, probe_interval: float, unresponsive_after: float) -> Path:
    cfg = fault_config(tmp_path, sim)
    text = cfg.read_text()
    text = text.replace(
        "probe_interval_seconds = 0.5", f"probe_interval_seconds = {probe_interval}"
    ).replace(
        "unresponsive_after_seconds = 2", f"unresponsive_after_seconds = {unresponsive_after}"
    )
    cfg.write_text(text)
    return cfg


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGCONT)


def state_of(d: Daemon, pid: int) -> str | None:
    return state_in(d.tunnel("portal"), pid)


def state_in(tunnel: dict[str, Any], pid: int) -> str | None:
    return next((r["state"] for r in tunnel["replicas"] if r["pid"] == pid), None)


def snapshot_where(d: Daemon, pid: int, state: str) -> dict[str, Any]:
    """The tunnel's status if the replica ``pid`` is in ``state`` in it, else nothing ({})."""
    tunnel = d.tunnel("portal")
    return tunnel if state_in(tunnel, pid) == state else {}


def test_our_stopped_child_is_unresponsive_at_once_and_continued_again(
    tmp_path: Path, sim: Sim, run_daemon: Callable[..., Daemon]
) -> None:
    # probes every 30 s and 60 s of silence: the probe path could not see it within 10 s
    d = run_daemon(config(tmp_path, sim, probe_interval=30, unresponsive_after=60))
    victim = d.wait_ready("portal", 2)[0]["pid"]
    with stopped(victim):
        # one snapshot: a successor may take the slot over at any moment after this one
        seen = wait_until(
            lambda: snapshot_where(d, victim, "unresponsive"),
            timeout=10,
            what="the stopped replica unresponsive",
        )
        assert seen["ready_replicas"] == 1  # the stopped primary is not counted as serving
        assert events(d, "replica_stopped") == 1
    # continued before a replacement was needed: serving again, counted again
    wait_until(lambda: events(d, "replica_continued") == 1, timeout=10, what="continued")
    wait_until(lambda: len(d.wait_ready("portal", 2)) == 2, timeout=30, what="2 ready again")


def test_an_adopted_stopped_replica_is_known_at_its_first_unanswered_probe(
    tmp_path: Path, sim: Sim, run_daemon: Callable[..., Daemon]
) -> None:
    cfg = config(tmp_path, sim, probe_interval=0.5, unresponsive_after=60)
    first = run_daemon(cfg)
    pids = {r["pid"] for r in first.wait_ready("portal", 2)}
    first.proc.send_signal(signal.SIGUSR2)  # hand the replicas over (systemctl restart)
    first.proc.wait(timeout=30)
    d = run_daemon(cfg)
    assert {r["pid"] for r in d.wait_ready("portal", 2)} == pids  # adopted: not its children
    victim = min(pids)
    with stopped(victim):
        wait_until(
            lambda: state_of(d, victim) == "unresponsive",
            timeout=15,
            what="the stopped, adopted replica unresponsive",
        )
        assert events(d, "replica_stopped") == 1
