"""The durable outbox: every notification is written here, one row per sink, before any delivery
attempt, and stays until delivered or given up. Bounded: beyond ``max_rows`` the oldest finished
rows go first. How the file is opened, and what happens to a corrupt one: see dbfile.py.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from tunnelkeeper.alerts.dbfile import checkpoint, is_corruption, open_database, quarantine
from tunnelkeeper.alerts.notification import Notification
from tunnelkeeper.errors import TunnelkeeperError

log = structlog.get_logger("tunnelkeeper.alerts")

MAX_ROWS = 10_000
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS delivery (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    notification_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at REAL,
    give_up_reason TEXT,
    created_at REAL NOT NULL,
    finished_at REAL,
    UNIQUE (sink, notification_id)
);
CREATE INDEX IF NOT EXISTS delivery_by_sink ON delivery (sink, state, seq);
CREATE INDEX IF NOT EXISTS delivery_by_state ON delivery (state);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


_SELECT = (
    "SELECT seq, sink, payload, state, attempts, last_error, next_attempt_at,"
    " give_up_reason, created_at FROM delivery "
)


class OutboxError(TunnelkeeperError):
    """The outbox could not read or write; the message is safe to log."""


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    sink: str
    notification: Notification
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: float | None  # wall clock, for people; the retry policy is monotonic
    give_up_reason: str | None
    created_at: float


class Outbox:
    def __init__(self, path: Path | None, *, max_rows: int = MAX_ROWS) -> None:
        """Open (or create) the outbox at ``path``; ``None`` means in memory."""
        self.path = path
        self.max_rows = max_rows
        self._db, self.is_durable = open_database(path, _SCHEMA)

    def _recover(self, exc: sqlite3.Error) -> OutboxError:
        """Corruption found while running: start a fresh file so the next call works."""
        if is_corruption(exc) and self.path is not None and self.is_durable:
            self._db.close()
            quarantine(self.path, str(exc))
            self._db, self.is_durable = open_database(self.path, _SCHEMA)
        return OutboxError(f"alert outbox: {exc}")

    def close(self) -> None:
        self._db.close()  # the last connection to close checkpoints the WAL

    def checkpoint(self) -> None:
        """Flush the WAL into the file (fsyncs). Blocking: call it in a worker thread."""
        if self.path is not None and self.is_durable:
            checkpoint(self.path)

    # --- writing ------------------------------------------------------------------------------

    def add(
        self,
        deliveries: Iterable[tuple[str, Notification]],
        state: Mapping[str, Any] | None = None,
    ) -> int:
        """Write (sink, notification) rows and, in the same transaction, the engine state.

        A row already present for (sink, id) is left alone. Returns the rows added.
        """
        now = time.time()
        rows = [
            (sink, n.id, n.alert.fingerprint, n.status, json.dumps(n.to_dict()), now)
            for sink, n in deliveries
        ]
        try:
            with self._transaction():
                cursor = self._db.executemany(
                    "INSERT OR IGNORE INTO delivery"
                    " (sink, notification_id, fingerprint, status, payload, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                added = cursor.rowcount
                if state is not None:
                    self._put_state("engine", state)
                self._trim()
        except sqlite3.Error as exc:
            raise self._recover(exc) from None
        return added

    def _trim(self) -> None:
        (count,) = self._db.execute("SELECT COUNT(*) FROM delivery").fetchone()
        excess = count - self.max_rows
        if excess <= 0:
            return
        self._db.execute(
            "DELETE FROM delivery WHERE seq IN (SELECT seq FROM delivery WHERE state != 'pending'"
            " ORDER BY seq LIMIT ?)",
            (excess,),
        )
        (count,) = self._db.execute("SELECT COUNT(*) FROM delivery").fetchone()
        if count > self.max_rows:
            dropped = count - self.max_rows
            self._db.execute(
                "DELETE FROM delivery WHERE seq IN (SELECT seq FROM delivery ORDER BY seq LIMIT ?)",
                (dropped,),
            )
            log.error("alert_outbox_overflowed", dropped_pending=dropped, max_rows=self.max_rows)

    def mark_delivered(self, seq: int) -> None:
        self._update(
            "UPDATE delivery SET state = 'delivered', attempts = attempts + 1, finished_at = ?,"
            " next_attempt_at = NULL WHERE seq = ?",
            (time.time(), seq),
        )

    def mark_retry(self, seq: int, error: str, delay_seconds: float) -> None:
        self._update(
            "UPDATE delivery SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?"
            " WHERE seq = ?",
            (error, time.time() + delay_seconds, seq),
        )

    def mark_failed(self, seq: int, reason: str) -> None:
        self._update(
            "UPDATE delivery SET state = 'failed', attempts = attempts + 1, last_error = ?,"
            " give_up_reason = ?, finished_at = ?, next_attempt_at = NULL WHERE seq = ?",
            (reason, reason, time.time(), seq),
        )

    def _update(self, sql: str, args: tuple[Any, ...]) -> None:
        try:
            self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise self._recover(exc) from None

    # --- reading ------------------------------------------------------------------------------

    def next_pending(self, sink: str) -> OutboxRow | None:
        """The oldest undelivered row of the sink (per-sink FIFO keeps fire before resolve)."""
        while True:
            rows = self._select(
                "WHERE sink = ? AND state = 'pending' ORDER BY seq LIMIT 1", (sink,)
            )
            if rows:
                return rows[0]
            if self.pending_count(sink) == 0:  # else the head was unreadable and is now failed
                return None

    def rows(self, sink: str | None = None) -> list[OutboxRow]:
        if sink is None:
            return self._select("ORDER BY seq", ())
        return self._select("WHERE sink = ? ORDER BY seq", (sink,))

    def latest_delivered(self, sink: str) -> list[OutboxRow]:
        """Per alert instance, the newest row of the sink, if that row was delivered."""
        return self._select(
            "WHERE seq IN (SELECT MAX(seq) FROM delivery WHERE sink = ? GROUP BY fingerprint)"
            " AND state = 'delivered' ORDER BY seq",
            (sink,),
        )

    def pending_count(self, sink: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM delivery WHERE state = 'pending'"
        args: tuple[str, ...] = ()
        if sink is not None:
            sql, args = sql + " AND sink = ?", (sink,)
        try:
            (count,) = self._db.execute(sql, args).fetchone()
        except sqlite3.Error as exc:
            raise self._recover(exc) from None
        return int(count)

    def _select(self, where: str, args: tuple[Any, ...]) -> list[OutboxRow]:
        try:
            # `where` is always one of this module's literal clauses; values go in as parameters
            raw = self._db.execute(_SELECT + where, args).fetchall()
        except sqlite3.Error as exc:
            raise self._recover(exc) from None
        out = []
        for seq, sink, payload, state, attempts, error, next_at, reason, created in raw:
            try:
                notification = Notification.from_dict(json.loads(payload))
            except (ValueError, TypeError, KeyError):
                log.error("alert_outbox_row_unreadable", seq=seq, sink=sink)
                self._update(
                    "UPDATE delivery SET state = 'failed', give_up_reason = ? WHERE seq = ?",
                    ("unreadable row", seq),
                )
                continue
            out.append(
                OutboxRow(seq, sink, notification, state, attempts, error, next_at, reason, created)
            )
        return out

    # --- engine state -------------------------------------------------------------------------

    def _put_state(self, key: str, value: Mapping[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    def load_state(self, key: str = "engine") -> object:
        """The last state stored with :meth:`add` (parsed JSON), or None."""
        try:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise self._recover(exc) from None
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except ValueError:
            return None

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
