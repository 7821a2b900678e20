"""The on-disk record of running replicas (state_dir/replicas.json).

Written whenever the set of replicas or their roles change, so that the next daemon (after a
restart, an upgrade, a crash or kill -9) adopts the cloudflared processes that kept serving.
A process is only adopted or signalled if pid, create time and command line all still match:
a recycled pid is never touched.
"""

from __future__ import annotations

import contextlib
import json
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import structlog

from tunnelkeeper.atomicfile import write_private_file

log = structlog.get_logger("tunnelkeeper.ledger")


@dataclass(frozen=True)
class LedgerEntry:
    tunnel: str
    slot: int
    generation: int
    pid: int
    create_time: float
    metrics_port: int
    token_file: str
    binary: str
    role: str = "primary"


def write_ledger(path: Path, entries: list[LedgerEntry]) -> None:
    data = json.dumps({"version": 1, "replicas": [asdict(e) for e in entries]}, indent=1)
    write_private_file(path, data)


def read_ledger(path: Path) -> list[LedgerEntry]:
    """Entries of a previous run; a missing or damaged file is an empty ledger."""
    try:
        obj = json.loads(path.read_text())
        rows = obj["replicas"]
        known = set(LedgerEntry.__dataclass_fields__)
        return [
            LedgerEntry(**{k: v for k, v in row.items() if k in known})
            for row in rows
            if isinstance(row, dict)
        ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("ledger_unreadable", path=str(path), error=str(exc))
        return []


def find_process(entry: LedgerEntry) -> psutil.Process | None:
    """The live process the entry describes, only if it is provably the same process."""
    try:
        proc = psutil.Process(entry.pid)
        if abs(proc.create_time() - entry.create_time) > 0.05:
            return None
        cmdline = proc.cmdline()
    except (psutil.Error, OSError):
        return None
    if not cmdline or f"127.0.0.1:{entry.metrics_port}" not in cmdline:
        return None
    if entry.token_file not in cmdline:
        return None
    return proc


def stop_process(proc: psutil.Process, timeout_seconds: float = 10.0) -> None:
    """SIGTERM (after SIGCONT), wait, SIGKILL: for verified processes we will not adopt."""
    with contextlib.suppress(psutil.Error):
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs([proc], timeout=timeout_seconds)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def remove_files(entry: LedgerEntry) -> None:
    for name in (entry.token_file, entry.token_file.removesuffix(".token") + ".log"):
        with contextlib.suppress(OSError):
            Path(name).unlink()
