"""Taking over the replicas a previous daemon left running.

When tunnelkeeper restarts (upgrade, crash, kill -9, ``systemctl restart``), its replicas keep
serving: they run in their own session, log to files, and systemd's KillMode=process leaves
them alone. The new daemon reads the ledger, verifies each process (pid + create time +
command line), and adopts it with its slot, generation and role, instead of killing and
restarting it. Anything it cannot verify or no longer wants is stopped; nothing is left
unsupervised.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import psutil
import structlog

from tunnelkeeper.errors import InvalidTokenError
from tunnelkeeper.supervise.ledger import (
    LedgerEntry,
    find_process,
    read_ledger,
    remove_files,
    stop_process,
)
from tunnelkeeper.supervise.policy import Role
from tunnelkeeper.supervise.records import Replica
from tunnelkeeper.supervise.replica import ReplicaId, ReplicaProcess, SpawnSpec
from tunnelkeeper.supervise.supervisor import TunnelSupervisor
from tunnelkeeper.tunneltoken import TunnelToken

log = structlog.get_logger("tunnelkeeper.adoption")


def adopt_one(sup: TunnelSupervisor, entry: LedgerEntry, create_time: float) -> bool:
    try:
        token = TunnelToken.parse(Path(entry.token_file).read_text())
    except (OSError, InvalidTokenError):
        return False
    role = Role(entry.role) if entry.role in Role._value2member_map_ else Role.PRIMARY
    rid = ReplicaId(sup.cfg.name, entry.slot, entry.generation)
    # What it was launched with, as recorded: a spec that differs from the config's is rolled.
    spec = SpawnSpec(
        binary=Path(entry.binary),
        extra_args=sup.cloudflared.args if entry.extra_args is None else entry.extra_args,
        label=entry.label or f"{sup.daemon.host}-{sup.cfg.name}-{entry.slot}",
        grace_period_seconds=(
            sup.cfg.grace_period_seconds
            if entry.grace_period_seconds is None
            else entry.grace_period_seconds
        ),
        metrics_port=entry.metrics_port,
        runtime_dir=sup.daemon.runtime_dir,
    )
    proc = ReplicaProcess(rid, spec, token, sup.on_exit)
    proc.adopt(entry.pid, create_time)
    age = max(0.0, time.time() - create_time)
    replica = Replica(
        rid,
        proc,
        role,
        "adopted",
        sup.clock() - age,
        datetime.fromtimestamp(create_time, UTC),
        epoch=sup.epoch,
    )
    sup.take(replica)
    return True


def adopt_all(
    ledger: Path, sups: Mapping[str, TunnelSupervisor], runtime_dir: Path
) -> tuple[int, int]:
    """Adopt what the ledger lists and can be verified; stop the rest, and any replica of ours
    the ledger does not list (a daemon killed between spawn and ledger write). Returns
    (adopted, stopped)."""
    adopted = stopped = 0
    stopped += _stop_unlisted(runtime_dir, {e.pid for e in read_ledger(ledger)})
    for entry in read_ledger(ledger):
        proc = find_process(entry)
        if proc is None:
            remove_files(entry)  # it is gone; its token must not linger on disk
            continue
        sup = sups.get(entry.tunnel)
        if sup is not None and adopt_one(sup, entry, proc.create_time()):
            adopted += 1
            continue
        why = "tunnel no longer configured" if sup is None else "token file unreadable"
        log.warning(
            "replica_not_adopted", tunnel=entry.tunnel, slot=entry.slot, pid=entry.pid, reason=why
        )
        stop_process(proc)
        remove_files(entry)
        stopped += 1
    return adopted, stopped


def _stop_unlisted(runtime_dir: Path, listed: set[int]) -> int:
    """Replicas are the only processes given a ``--token-file`` under runtime_dir/replicas/."""
    marker = str(runtime_dir / "replicas") + os.sep
    stopped = 0
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["pid"] in listed or "--token-file" not in cmdline:
            continue
        i = cmdline.index("--token-file")
        if i + 1 < len(cmdline) and cmdline[i + 1].startswith(marker):
            log.warning(
                "unlisted_replica_stopped",
                pid=proc.info["pid"],
                token_file=Path(cmdline[i + 1]).name,
            )
            stop_process(proc)
            for leftover in (Path(cmdline[i + 1]), Path(cmdline[i + 1]).with_suffix(".log")):
                with contextlib.suppress(OSError):
                    leftover.unlink()
            stopped += 1
    return stopped
