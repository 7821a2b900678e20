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
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import structlog

from tunnelkeeper.atomicfile import write_private_file
from tunnelkeeper.structs import Struct, asdict
from tunnelkeeper.supervise.launch import ReplicaId, SpawnSpec

if TYPE_CHECKING:
    from tunnelkeeper.supervise.records import Replica

log = structlog.get_logger("tunnelkeeper.ledger")


class LedgerEntry(Struct, frozen=True):
    tunnel: str
    slot: int
    generation: int
    pid: int
    create_time: float
    metrics_port: int
    token_file: str
    binary: str
    role: str = "primary"
    # the rest of the launch spec, so a config changed while no daemon ran still rolls adopted
    # replicas (None: written by a daemon before 0.2, adopted with the current config's values)
    extra_args: tuple[str, ...] | None = None
    label: str | None = None
    grace_period_seconds: float | None = None


def entry_for(r: Replica) -> LedgerEntry:
    return entry_of(
        r.rid,
        r.proc.spec,
        r.proc.pid or 0,
        r.proc.create_time or 0.0,
        r.proc.token_file,
        r.role.value,
    )


def entry_of(
    rid: ReplicaId,
    spec: SpawnSpec,
    pid: int,
    create_time: float,
    token_file: Path,
    role: str = "primary",
) -> LedgerEntry:
    """The record of a replica launched with ``spec``: supervised, or launched by a cold start
    before its supervisor existed (service/coldstart.py)."""
    return LedgerEntry(
        rid.tunnel,
        rid.slot,
        rid.generation,
        pid,
        create_time,
        spec.metrics_port,
        str(token_file),
        str(spec.binary),
        role,
        extra_args=spec.extra_args,
        label=spec.label,
        grace_period_seconds=spec.grace_period_seconds,
    )


class LedgerWriter:
    """Keeps the ledger in step with the running replicas: rewritten only when the set of
    replicas or their roles changed, a failure logged once per distinct error."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: tuple[tuple[Any, ...], ...] = ()
        self.error: str | None = None

    def write(self, replicas: Iterable[Replica]) -> None:
        live = [r for r in replicas if r.proc.pid is not None and r.proc.running]
        key = tuple((r.proc.pid, r.rid.generation, r.role.value) for r in live)
        if key == self._key:
            return  # the common case, every tick: nothing to write, nothing to build
        try:
            write_ledger(self.path, [entry_for(r) for r in live])
        except OSError as exc:
            error = exc.strerror or str(exc)  # not str(exc): it names a random temp file
            if error != self.error:
                log.error(
                    "ledger_write_failed",
                    path=str(self.path),
                    error=error,
                    consequence="a daemon restart now could not adopt these replicas",
                )
            self.error = error
            return
        self._key = key
        if self.error is not None:
            log.info("ledger_write_recovered", path=str(self.path))
        self.error = None


def write_ledger(path: Path, entries: list[LedgerEntry]) -> None:
    data = json.dumps({"version": 1, "replicas": [asdict(e) for e in entries]}, indent=1)
    write_private_file(path, data)


def read_ledger(path: Path) -> list[LedgerEntry]:
    """Entries of a previous run; a missing or damaged file is an empty ledger, a damaged row is
    skipped (the start-up sweep then treats its process as unlisted)."""
    try:
        obj = json.loads(path.read_text())
        rows = obj["replicas"]
        if not isinstance(rows, list):
            raise ValueError("'replicas' is not a list")
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError, KeyError, RecursionError) as exc:
        log.warning("ledger_unreadable", path=str(path), error=str(exc))
        return []
    entries = []
    for row in rows:
        entry = _entry(row)
        if entry is None:
            log.warning("ledger_row_skipped", path=str(path))
        else:
            entries.append(entry)
    return entries


_TYPES: dict[str, tuple[type, ...]] = {
    "tunnel": (str,),
    "slot": (int,),
    "generation": (int,),
    "pid": (int,),
    "create_time": (float, int),
    "metrics_port": (int,),
    "token_file": (str,),
    "binary": (str,),
    "role": (str,),
    "label": (str, type(None)),
    "grace_period_seconds": (float, int, type(None)),
}


def _entry(row: object) -> LedgerEntry | None:
    if not isinstance(row, dict):
        return None
    values = {k: row[k] for k in _TYPES if k in row}
    if any(
        not isinstance(v, _TYPES[k]) or isinstance(v, bool) for k, v in values.items()
    ) or not all(k in values for k in list(_TYPES)[:8]):
        return None
    args = row.get("extra_args")
    if args is not None:
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            return None
        args = tuple(args)
    return LedgerEntry(**values, extra_args=args)


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
    stem = entry.token_file.removesuffix(".token")
    for name in (entry.token_file, stem + ".log", stem + ".read"):
        with contextlib.suppress(OSError):
            Path(name).unlink()
