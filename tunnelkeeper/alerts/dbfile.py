"""Opening the outbox's SQLite file so that a bad file never becomes a crash loop.

WAL with ``synchronous=NORMAL``: a commit reaches the OS before it returns, so it survives kill -9
of the daemon; only an OS crash or power loss can lose the last commits (and the restarted daemon
re-evaluates every condition anyway). ``FULL`` would fsync on every enqueue from the supervision
loop. Automatic checkpoints are off so that the remaining fsyncs happen in
:func:`checkpoint`, which the dispatcher runs in a worker thread.

A file that is not a readable database is moved aside (``<name>.corrupt-<ts>``) and replaced; if no
file can be used at all, the database lives in memory (not durable). Both are logged as errors.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import structlog

log = structlog.get_logger("tunnelkeeper.alerts")


def connect(target: str, schema: str) -> sqlite3.Connection:
    """Open, configure, integrity-check and migrate; raises sqlite3.Error."""
    db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA busy_timeout = 2000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA wal_autocheckpoint = 0")
        row = db.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {row[0] if row else 'no answer'}")
        db.executescript(schema)
    except sqlite3.Error:
        db.close()
        raise
    return db


def is_corruption(exc: sqlite3.Error) -> bool:
    """sqlite3 raises plain DatabaseError for "not a database" / "malformed"; its subclasses
    (OperationalError: locked, read-only, I/O) are not about the file's contents."""
    return type(exc) is sqlite3.DatabaseError


def quarantine(path: Path, reason: str) -> Path:
    """Move the database (and its -wal/-shm) aside; returns the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    moved = path.with_name(f"{path.name}.corrupt-{stamp}")
    serial = 0
    while moved.exists():
        serial += 1
        moved = path.with_name(f"{path.name}.corrupt-{stamp}-{serial}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            src.replace(Path(str(moved) + suffix))
    log.error("alert_outbox_quarantined", path=str(path), moved_to=str(moved), error=reason)
    return moved


def open_database(path: Path | None, schema: str) -> tuple[sqlite3.Connection, bool]:
    """(connection, is_durable). Never raises for a bad or unusable file."""
    if path is None:
        return connect(":memory:", schema), False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return connect(str(path), schema), True
    except sqlite3.Error as exc:
        if not is_corruption(exc):
            return _in_memory(path, str(exc), schema)
        quarantine(path, str(exc))
        try:
            return connect(str(path), schema), True
        except sqlite3.Error as again:
            return _in_memory(path, str(again), schema)
    except OSError as exc:
        return _in_memory(path, exc.strerror or str(exc), schema)


def _in_memory(path: Path, reason: str, schema: str) -> tuple[sqlite3.Connection, bool]:
    log.error("alert_outbox_degraded", path=str(path), error=reason, durable=False)
    return connect(":memory:", schema), False


def checkpoint(path: Path) -> None:
    """Copy the WAL into the database file (this fsyncs). Blocking: run it in a thread."""
    try:
        with sqlite3.connect(str(path), timeout=2.0) as db:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error as exc:
        log.warning("alert_outbox_checkpoint_failed", error=str(exc))
