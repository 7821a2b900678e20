"""Who a replica runs as: privilege separation between tunnels.

With ``replica_users = "per-tunnel"`` (or ``"auto"`` when the daemon can switch users), each
tunnel's replicas run as a uid and gid of their own, with no supplementary groups. A
compromised cloudflared can then read only its own token file (0400, owned by its uid, under a
directory it may traverse but not list); the other tunnels' tokens, the control socket, the
state dir and the alert secrets stay the daemon's.

The ids need no passwd entry (like systemd's DynamicUser=): ``replica_uid_base`` plus a stable
offset derived from the tunnel's name, so a tunnel keeps its uid across restarts and config
reorders, and two tunnels never share one.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from tunnelkeeper.structs import Struct

# 2^20 ids above the base: collisions between a handful of names are rare, and resolved below
UID_SPAN = 1 << 20
# Linux capability bits (linux/capability.h)
_CAP_CHOWN, _CAP_KILL, _CAP_SETGID, _CAP_SETUID = 0, 5, 6, 7


class RunAs(Struct, frozen=True):
    uid: int
    gid: int


def can_switch_users() -> bool:
    """Root, or holding the capabilities spawning and signalling another uid needs."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as f:
            caps = next(line for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration):
        return False
    eff = int(caps.split()[1], 16)
    return all(eff >> bit & 1 for bit in (_CAP_CHOWN, _CAP_KILL, _CAP_SETGID, _CAP_SETUID))


def identities(names: Iterable[str], base: int) -> dict[str, RunAs]:
    """A distinct, stable uid/gid per tunnel name."""
    taken: set[int] = set()
    out: dict[str, RunAs] = {}
    for name in sorted(names):
        offset = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % UID_SPAN
        uid = base + offset
        while uid in taken:
            uid = base + (uid - base + 1) % UID_SPAN
        taken.add(uid)
        out[name] = RunAs(uid, uid)
    return out


def separation_enabled(mode: str, binary: Path, runtime_dir: Path) -> tuple[bool, str | None]:
    """What ``replica_users`` means on this host, now: (enabled, why not or why it will fail).

    "auto" separates only when it can work: the daemon may switch users, and another user may
    execute the binary (its interpreter too, for a script) and reach runtime_dir."""
    if mode == "off":
        return False, None
    problem = None if can_switch_users() else "the daemon has neither root nor CAP_SETUID"
    problem = problem or unreachable(binary, executable=True) or unreachable(runtime_dir)
    if mode == "per-tunnel":
        return True, problem
    return problem is None, problem


def unreachable(path: Path, *, executable: bool = False) -> str | None:
    """Why another unprivileged user could not reach ``path`` (or execute it), or None."""
    real = Path(os.path.realpath(path))
    for directory in [*reversed(real.parents)][1:]:
        try:
            mode = directory.stat().st_mode
        except OSError as exc:
            return f"{directory}: {exc.strerror or exc}"
        if not mode & stat.S_IXOTH:
            return f"{directory} is not searchable by other users (needed for {path})"
    if not executable:
        return None
    try:
        mode = real.stat().st_mode
        with open(real, "rb") as f:
            head = f.read(256)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    if not mode & stat.S_IXOTH:
        return f"{path} is not executable by other users"
    if head.startswith(b"#!"):  # a script: its interpreter must be reachable too
        words = head[2:].split(b"\n", 1)[0].split()
        if words:
            return unreachable(Path(os.fsdecode(words[0])), executable=True)
    return None
