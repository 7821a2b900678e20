"""The durable outbox: survives kill -9, recovers from a corrupt file, stays bounded."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook
from structlog.testing import capture_logs

from tests.alerts.receiver import Receiver
from tests.alerts.samples import many
from tests.waiting import free_port, wait_until
from tunnelkeeper.alerts import Outbox
from tunnelkeeper.alerts.pipeline import OUTBOX_FILE

ROOT = Path(__file__).resolve().parents[2]


class Driver:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.alerts.outbox_driver", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def ready(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"driver exited with {self.proc.wait()}"
        return dict(json.loads(line))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def drivers() -> Iterator[Callable[..., Driver]]:
    started: list[Driver] = []

    def make(*args: str) -> Driver:
        driver = Driver(*args)
        started.append(driver)
        return driver

    yield make
    for driver in started:
        driver.stop()


def outbox_rows(path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT state, attempts FROM delivery ORDER BY seq").fetchall()


def test_notifications_survive_kill_9_and_arrive_once_per_id_in_order(
    tmp_path: Path,
    whsec: tuple[str, Path],
    drivers: Callable[..., Driver],
    receivers: Callable[..., Receiver],
) -> None:
    secret, secret_file = whsec
    state = tmp_path / "state"
    port = free_port()  # nothing listens here yet: the receiver is "down"
    url = f"http://127.0.0.1:{port}/hook"

    # 6 replicas go down, 2 come back; the receiver is unreachable throughout
    first = drivers(str(state), url, str(secret_file), "--fire", "6", "--resolve", "2")
    phase1 = first.ready()
    assert len(phase1["enqueued"]) == 8
    wait_until(
        lambda: any(attempts > 0 for _, attempts in outbox_rows(state / OUTBOX_FILE)),
        what="a failed delivery attempt",
    )
    first.stop(signal.SIGKILL)
    assert all(s == "pending" for s, _ in outbox_rows(state / OUTBOX_FILE))

    # restart, still without a receiver: the 4 still-firing alerts are restored and, no longer
    # observed, resolve; then the receiver comes back
    second = drivers(str(state), url, str(secret_file), "--clear")
    phase2 = second.ready()
    assert phase2["restored"] == 4
    assert len(phase2["enqueued"]) == 4
    receiver = receivers(port)
    expected = phase1["enqueued"] + phase2["enqueued"]

    def ids() -> list[str]:
        return [r.headers["webhook-id"] for r in receiver.received("/hook")]

    wait_until(lambda: set(ids()) >= set(expected), timeout=30, what="all notifications")
    first_seen = list(dict.fromkeys(ids()))
    assert first_seen == expected  # FIFO: every fire before its resolve, nothing lost
    for r in receiver.received("/hook"):
        body = Webhook(secret).verify(r.body, r.headers)
        assert body["alerts"][0]["labels"]["alertname"] == "ReplicaDown"
    fired = {i.rsplit("-", 2)[0] for i in expected if i.endswith("-firing")}
    resolved = {i.rsplit("-", 2)[0] for i in expected if i.endswith("-resolved")}
    assert fired == resolved and len(fired) == 6
    wait_until(
        lambda: all(s == "delivered" for s, _ in outbox_rows(state / OUTBOX_FILE)),
        what="outbox drained",
    )


def test_corrupt_outbox_is_moved_aside_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with capture_logs() as logs:
        outbox = Outbox(path)
    try:
        assert outbox.is_durable
        moved = list(tmp_path.glob("outbox.sqlite3.corrupt-*"))
        assert len(moved) == 1
        assert moved[0].read_bytes().startswith(b"this is not a database")
        assert [e["event"] for e in logs] == ["alert_outbox_quarantined"]
        assert logs[0]["log_level"] == "error"
        outbox.add([("hook", n) for n in many(1)])
        assert outbox.pending_count() == 2
    finally:
        outbox.close()


def test_unusable_state_dir_falls_back_to_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with capture_logs() as logs:
        outbox = Outbox(blocker / "outbox.sqlite3")  # parent is a file: cannot be created
    try:
        assert not outbox.is_durable
        assert logs[0]["event"] == "alert_outbox_degraded"
        outbox.add([("hook", n) for n in many(1)])
        assert outbox.pending_count() == 2
    finally:
        outbox.close()


def test_rows_and_engine_state_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    notes = many(2)
    outbox = Outbox(path)
    assert outbox.add([("a", n) for n in notes] + [("b", notes[0])], {"version": 1, "x": [1]}) == 5
    assert outbox.add([("a", notes[0])]) == 0  # same (sink, id): not duplicated
    row = outbox.next_pending("a")
    assert row is not None
    outbox.mark_retry(row.seq, "HTTP 503", 2.0)
    outbox.close()

    reopened = Outbox(path)
    try:
        assert reopened.load_state() == {"version": 1, "x": [1]}
        rows = reopened.rows("a")
        assert [r.notification.id for r in rows] == [n.id for n in notes]
        assert rows[0].attempts == 1 and rows[0].last_error == "HTTP 503"
        assert rows[0].next_attempt_at is not None
        assert reopened.pending_count("b") == 1
    finally:
        reopened.close()


def test_outbox_is_bounded_dropping_oldest_delivered_first(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_rows=10)
    try:
        first = many(4)  # 8 rows
        outbox.add([("hook", n) for n in first])
        for row in outbox.rows()[:4]:
            outbox.mark_delivered(row.seq)
        later = many(3, start=first[-1].alert.fired_at.replace(year=2027))  # 6 more rows
        outbox.add([("hook", n) for n in later])
        rows = outbox.rows()
        assert len(rows) == 10
        assert [r.state for r in rows].count("pending") == 10  # all 4 delivered ones dropped
        with capture_logs() as logs:
            outbox.add(
                [("hook", n) for n in many(1, start=later[0].alert.fired_at.replace(year=2028))]
            )
        assert len(outbox.rows()) == 10
        assert logs[0]["event"] == "alert_outbox_overflowed"
    finally:
        outbox.close()


def test_unreadable_row_is_given_up_not_crashed_on(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path)
    try:
        outbox.add([("hook", n) for n in many(1)])
        with sqlite3.connect(path) as db:
            db.execute("UPDATE delivery SET payload = '{bad' WHERE seq = 1")
        row = outbox.next_pending("hook")
        assert row is not None and row.seq == 2
        assert outbox.rows()[0].notification.status == "resolved"
    finally:
        outbox.close()
