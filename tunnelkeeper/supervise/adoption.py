"""Taking over the replicas a previous daemon left running.

When tunnelkeeper restarts (upgrade, crash, kill -9, ``systemctl restart``), its replicas keep
serving: they run in their own session, log to files, and systemd's KillMode=process leaves
them alone. The new daemon reads the ledger, verifies each process (pid + create time +
command line), and adopts it with its slot, generation and role, instead of killing and
restarting it. Replacement before removal, always: a replica whose record is missing (ledger
unwritable, stale or deleted) is recognised by its command line; one whose token file is gone
(a deleted runtime_dir) is adopted with an unknown token, so the policy rolls it: its
successor must be ready at the edge before it drains. Only a replica of a tunnel no longer
configured is stopped outright. Nothing is left unsupervised.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import structlog

from tunnelkeeper.errors import InvalidTokenError
from tunnelkeeper.structs import replace
from tunnelkeeper.supervise.identity import RunAs
from tunnelkeeper.supervise.launch import EarlyLaunch, ReplicaId, SpawnSpec
from tunnelkeeper.supervise.ledger import (
    LedgerEntry,
    find_process,
    read_ledger,
    remove_files,
    stop_process,
)
from tunnelkeeper.supervise.policy import Role
from tunnelkeeper.supervise.records import Replica
from tunnelkeeper.supervise.replica import ReplicaProcess
from tunnelkeeper.supervise.supervisor import TunnelSupervisor
from tunnelkeeper.tunneltoken import TunnelToken

log = structlog.get_logger("tunnelkeeper.adoption")


# An adopted replica whose token file is gone: it runs *some* token, not known which. Its spec
# never matches the target's, so it is rolled; it never becomes the supervisor's proven token.
UNKNOWN_TOKEN = TunnelToken("", "", b"")


def adopt_one(
    sup: TunnelSupervisor,
    entry: LedgerEntry,
    create_time: float,
    early: EarlyLaunch | None = None,
) -> None:
    """Take over the replica ``entry`` lists. ``early``: it is this daemon's own, launched by its
    cold start (service/coldstart.py) before the supervisors existed; it is then supervised as
    spawned, not adopted (reaped, its log relayed from the first line, its age exact)."""
    try:
        token = TunnelToken.parse(Path(entry.token_file).read_text())
    except (OSError, InvalidTokenError) as exc:
        token = UNKNOWN_TOKEN
        log.warning(
            "replica_adopted_for_replacement",
            tunnel=entry.tunnel,
            slot=entry.slot,
            pid=entry.pid,
            reason=f"token file unreadable: {getattr(exc, 'strerror', None) or exc}",
            action="kept serving until its replacement is ready at the edge",
        )
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
        run_as=_runs_as(entry.pid),
    )
    proc = ReplicaProcess(rid, spec, token, sup.on_exit)
    if early is not None:
        proc.start(early.child)
        # its launch time, not the create time (whole seconds off: the kernel's boot time is)
        age = max(0.0, time.monotonic() - early.launched_at)
    else:
        proc.adopt(entry.pid, create_time)
        age = max(0.0, time.time() - create_time)
    replica = Replica(
        rid,
        proc,
        role,
        "adopted" if early is None else "start",
        sup.clock() - age,
        datetime.now(UTC) - timedelta(seconds=age),
        epoch=sup.epoch,
    )
    sup.take(replica)


def _runs_as(pid: int) -> RunAs | None:
    """Who the process runs as, if not the daemon's own user (then it is rolled to the
    configured identity like any other spec change)."""
    try:
        p = psutil.Process(pid)
        uid, gid = p.uids().real, p.gids().real
    except psutil.Error:
        return None
    return None if uid == os.getuid() else RunAs(uid, gid)


def adopt_all(
    ledger: Path,
    sups: Mapping[str, TunnelSupervisor],
    runtime_dir: Path,
    children: Mapping[int, EarlyLaunch] | None = None,
) -> tuple[int, int]:
    """Adopt what the ledger lists, and any replica of ours it does not list (recognised by its
    command line); stop only replicas of tunnels no longer configured. ``children``: replicas
    this daemon's cold start launched, by pid; they are taken over as its own. Returns
    (adopted, stopped), the cold start's children not counted."""
    children = children or {}
    adopted = stopped = 0
    listed = read_ledger(ledger)
    verified = [(e, find_process(e)) for e in listed]
    taken = {e.pid for e, proc in verified if proc is not None}
    # Anything of ours the ledger does not list, or lists wrongly (a record that does not
    # verify while its replica runs), is found by its command line: nothing is left behind.
    found = [(e, find_process(e)) for e in unlisted_entries(runtime_dir, taken)]
    live_files = {e.token_file for e, proc in verified + found if proc is not None}
    for entry, proc in verified:
        if proc is None and psutil.pid_exists(entry.pid):
            log.warning("ledger_record_not_verified", **_mismatch(entry))
    for entry, proc in verified + found:
        if proc is None:
            if entry.token_file not in live_files:
                remove_files(entry)  # it is gone; its token must not linger on disk
            continue
        sup = sups.get(entry.tunnel)
        if sup is not None:
            early = children.get(entry.pid)
            adopt_one(sup, entry, proc.create_time(), early)
            adopted += early is None
            continue
        log.warning(
            "replica_not_adopted",
            tunnel=entry.tunnel,
            slot=entry.slot,
            pid=entry.pid,
            reason="tunnel no longer configured",
        )
        stop_process(proc)
        remove_files(entry)
        stopped += 1
    return adopted, stopped


def _mismatch(entry: LedgerEntry) -> dict[str, object]:
    """What differs between a ledger record and the live process with its pid (for the log)."""
    out: dict[str, object] = {"tunnel": entry.tunnel, "slot": entry.slot, "pid": entry.pid}
    try:
        proc = psutil.Process(entry.pid)
        out["create_time_difference"] = round(proc.create_time() - entry.create_time, 3)
        cmdline = proc.cmdline()
    except (psutil.Error, OSError) as exc:
        out["error"] = type(exc).__name__
        return out
    out["same_token_file"] = entry.token_file in cmdline
    out["same_metrics_port"] = f"127.0.0.1:{entry.metrics_port}" in cmdline
    return out


def unlisted_entries(runtime_dir: Path, listed: set[int]) -> list[LedgerEntry]:
    """Ledger entries rebuilt from the command lines of our replicas that the ledger does not
    list (a daemon killed between spawn and ledger write, or a ledger that could not be
    written). Replicas are the only processes given a ``--token-file`` under
    runtime_dir/replicas/, named ``TUNNEL.SLOT.GENERATION.token``. Per slot, the oldest is
    adopted as the primary and a newer one as its successor, so the policy promotes the newer
    only once it is ready at the edge."""
    marker = str(runtime_dir / "replicas") + os.sep
    found: list[LedgerEntry] = []
    # the command line of every process, the create time only of candidates: half the reads
    # of /proc, on the way to every start's first READY=1
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["pid"] in listed or "--token-file" not in cmdline:
            continue
        try:
            create_time = proc.create_time()
        except psutil.Error:
            continue  # gone since
        entry = entry_from_argv(cmdline, proc.info["pid"], create_time)
        if entry is not None and entry.token_file.startswith(marker):
            log.warning(
                "unlisted_replica_found",
                pid=entry.pid,
                tunnel=entry.tunnel,
                slot=entry.slot,
                action="adopting it from its command line",
            )
            found.append(entry)
    roles: dict[tuple[str, int], int] = {}
    out = []
    for e in sorted(found, key=lambda e: (e.tunnel, e.slot, e.generation)):
        n = roles.get((e.tunnel, e.slot), 0)
        roles[(e.tunnel, e.slot)] = n + 1
        role = (Role.PRIMARY, Role.SUCCESSOR)[n] if n < 2 else Role.DRAINING
        out.append(replace(e, role=role.value))
    return out


def entry_from_argv(cmdline: list[str], pid: int, create_time: float) -> LedgerEntry | None:
    """The inverse of ``replica.build_argv``; None for anything that is not one of ours."""

    def value(flag: str) -> str | None:
        if flag in cmdline and cmdline.index(flag) + 1 < len(cmdline):
            return cmdline[cmdline.index(flag) + 1]
        return None

    token_file, metrics, label = value("--token-file"), value("--metrics"), value("--label")
    if token_file is None or metrics is None or not metrics.startswith("127.0.0.1:"):
        return None
    if "tunnel" not in cmdline or cmdline.index("tunnel") == 0:
        return None
    # [binary, "tunnel", ...]; a script's argv starts with its interpreter: [python, script, ...]
    binary = cmdline[cmdline.index("tunnel") - 1]
    parts = Path(token_file).name.removesuffix(".token").rsplit(".", 2)
    port = metrics.removeprefix("127.0.0.1:")
    if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit() and port.isdigit()):
        return None
    grace = (value("--grace-period") or "").removesuffix("s")
    extra: tuple[str, ...] | None = None
    if "--label" in cmdline and "run" in cmdline:
        start, end = cmdline.index("--label") + 2, len(cmdline) - 1 - cmdline[::-1].index("run")
        extra = tuple(cmdline[start:end]) if start <= end else None
    return LedgerEntry(
        tunnel=parts[0],
        slot=int(parts[1]),
        generation=int(parts[2]),
        pid=pid,
        create_time=create_time,
        metrics_port=int(port),
        token_file=token_file,
        binary=binary,
        extra_args=extra,
        label=label,
        grace_period_seconds=float(grace) if grace.replace(".", "", 1).isdigit() else None,
    )
