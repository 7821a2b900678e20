"""Issue 6: tunnelkeeper restarts without tunnel downtime — replicas are adopted, not killed."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable

import psutil
import pytest

from tests.harness import Daemon, Load, Sim, start_daemon
from tests.waiting import wait_until

pytestmark = pytest.mark.system
RunDaemon = Callable[..., Daemon]


def alive(pid: int) -> bool:
    """Running, not a zombie: the first daemon's children are re-parented when it dies, and an
    exited one stays a zombie until whoever inherited it reaps it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGUSR2])
def test_daemon_restart_adopts_replicas_with_zero_failed_requests(
    sim: Sim, run_daemon: RunDaemon, how: signal.Signals
) -> None:
    d = run_daemon()
    before = {r["pid"]: r for r in d.wait_ready("portal", 2)}
    d2: Daemon | None = None
    try:
        with Load(sim, "portal", rate_per_second=50) as load:
            wait_until(lambda: load.results["ok"] >= 20, timeout=10, what="load flowing")
            d.proc.send_signal(how)
            rc = d.proc.wait(timeout=15)
            assert rc == (0 if how == signal.SIGUSR2 else -9)
            # Nobody supervises for a moment; the replicas keep serving.
            served = load.results["ok"]
            wait_until(lambda: load.results["ok"] >= served + 20, timeout=10, what="served alone")
            assert all(alive(pid) for pid in before)
            d2 = start_daemon(d.config)
            after = d2.wait_ready("portal", 2)
            assert {r["pid"] for r in after} == set(before)
            assert {r["generation"] for r in after} == {r["generation"] for r in before.values()}
            assert all(r["started_because"] == "adopted" for r in after)
            # the gauges are set at the daemon's next pass, a moment after status sees it ready
            metrics = wait_until(
                lambda: metrics_showing(
                    d2, 'tunnelkeeper_tunnel_ready_replicas{tunnel="portal"} 2.0'
                ),
                timeout=5,
                what="the ready gauge at 2",
            )
            assert "tunnelkeeper_replica_restarts_total{" not in metrics  # nothing restarted
            served = load.results["ok"]
            wait_until(lambda: load.results["ok"] >= served + 20, timeout=10)
            # Handover and adoption lost nothing.
            assert load.failed == 0, load.failures[:5]
            # The adopted replicas are fully supervised: a kill is noticed and replaced.
            victim = after[0]["pid"]
            killed_at = time.time()
            psutil.Process(victim).kill()
            wait_until(
                lambda: victim not in {r["pid"] for r in d2.wait_ready("portal", 2)},
                timeout=20,
                what="adopted replica replaced",
            )
        # The test's own kill -9 can fail the one request in flight on the killed replica (the
        # load sends one at a time), as the real edge would: it cannot retry a request it has
        # already sent. Nothing else may fail.
        load.assert_only_cut_off(killed_at)
    finally:
        if d2 is not None:
            d2.stop()
    # a plain stop drained them all
    assert not any(alive(pid) for pid in before)
    log = d.output()
    assert "replica_adopted" in log


def test_args_changed_while_no_daemon_ran_roll_the_adopted_replicas(
    sim: Sim, run_daemon: RunDaemon
) -> None:
    """The ledger records each replica's launch spec, arguments included: a [cloudflared] args
    change made while no daemon ran is rolled in (surge, ready, drain) after the restart, with
    no failed request, instead of leaving the adopted replicas on the old arguments."""
    d = run_daemon()
    before = {r["pid"] for r in d.wait_ready("portal", 2)}
    d.proc.send_signal(signal.SIGUSR2)  # a handover: the replicas keep running
    assert d.proc.wait(timeout=15) == 0
    text = d.config.read_text()
    new_arg = f'args = ["--edge", "{sim.edge}", "--retries", "3"]'
    d.config.write_text(text.replace(f'args = ["--edge", "{sim.edge}"]', new_arg))
    d2 = start_daemon(d.config)
    try:
        with Load(sim, "portal", rate_per_second=20) as load:

            def rolled() -> bool:
                prim = d2.wait_ready("portal", 2)
                return all(
                    "--retries" in psutil.Process(r["pid"]).cmdline() for r in prim
                ) and not any(r["role"] != "primary" for r in d2.tunnel("portal")["replicas"])

            wait_until(rolled, timeout=60, what="replicas rolled to the new arguments")
        assert not before & {r["pid"] for r in d2.primaries("portal")}
        assert "replica_adopted" in d2.output()
    finally:
        d2.stop()
    assert load.failed == 0, load.failures[:5]


def test_a_ledger_record_that_does_not_verify_still_gets_its_replica_adopted(
    sim: Sim, run_daemon: RunDaemon
) -> None:
    """A record that no longer matches its live replica (here: its create time is off) must
    not leave that replica unsupervised, nor delete its files: it is recognised by its command
    line and adopted (found under systemd, where a restart once left one replica orphaned)."""
    d = run_daemon()
    before = {r["pid"] for r in d.wait_ready("portal", 2)}
    d.proc.send_signal(signal.SIGUSR2)
    assert d.proc.wait(timeout=15) == 0
    ledger = d.config.parent / "state" / "replicas.json"
    data = json.loads(ledger.read_text())
    data["replicas"][1]["create_time"] += 5.0
    ledger.write_text(json.dumps(data))
    d2 = start_daemon(d.config)
    try:
        assert {r["pid"] for r in d2.wait_ready("portal", 2)} == before
        assert "ledger_record_not_verified" in d2.output()
        # (one log file for both daemons) the first one's two spawns, nothing since
        assert d2.output().count('"event": "replica_spawned"') == 2
    finally:
        d2.stop()
    assert not any(alive(pid) for pid in before)  # and the stop drained both


def metrics_showing(d: Daemon, sample: str) -> str:
    """The daemon's /metrics if it holds ``sample``, else nothing ("")."""
    text = d.metrics()
    return text if sample in text else ""
