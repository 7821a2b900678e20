"""The daemon process's own guards, set up before it touches anything.

- **One daemon per state dir.** An exclusive ``flock`` on ``state_dir`` and ``runtime_dir``
  (their ``.lock`` files): a second daemon on the same directories (say, a debug run with
  another ``listen``) would supervise the same replicas twice, page twice, drain the first
  one's replicas on Ctrl-C and take its control socket. It refuses to start instead, naming the
  directory and the pid holding it. The kernel drops the lock when the holder dies (kill -9
  included), and the descriptor is close-on-exec, so replicas never hold it.
- **Descriptors.** The soft ``RLIMIT_NOFILE`` is raised to the hard one (systemd's
  ``LimitNOFILE=``) before any replica is launched, so they inherit it too.
- **No secrets in core dumps.** ``PR_SET_DUMPABLE 0`` (no core, no ptrace by other processes
  of the same user, /proc/self files root-owned) and ``RLIMIT_CORE 0``, which the replicas
  inherit: the tokens and signing secrets in memory never land on disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import os
import resource
from pathlib import Path

PR_SET_DUMPABLE = 4


class AlreadyRunning(Exception):
    pass


def forbid_core_dumps() -> None:
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: RLIMIT_CORE 0 still applies


def settle_after_start() -> None:
    """Start-up is over: collect its garbage once, then move every object it left (modules,
    config, the replicas' records: ~45,000) out of the cyclic collector's sight
    (``gc.freeze``), so its periodic full collections scan only what the daemon makes from now
    on. A full collection at 100 replicas cost 12.5 ms, one pause of the event loop that every
    probe waiting then saw. Then give the C heap's free pages back to the kernel (glibc's
    ``malloc_trim``): what start-up allocated and freed otherwise stays resident; elsewhere
    than glibc, that part does nothing. The collector, paused for start-up (``run`` in
    cli.py), runs again from here."""
    gc.collect()
    gc.freeze()
    gc.enable()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def lock_dirs(dirs: list[tuple[str, Path]]) -> list[int]:
    """Take the exclusive lock of each directory; the descriptors must stay open for the
    daemon's lifetime. Raises AlreadyRunning naming the key, directory and holder."""
    held: list[int] = []
    try:
        for key, directory in dirs:
            held.append(_lock(key, directory))
    except BaseException:
        for fd in held:
            os.close(fd)
        raise
    return held


def _lock(key: str, directory: Path) -> int:
    path = directory / ".lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        writable = True
    except OSError:  # a read-only state_dir still locks, through an existing file
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        writable = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        who = f"pid {holder}" if holder else "another process"
        raise AlreadyRunning(
            f"{key}: {directory} is in use by another tunnelkeeper ({who}); one daemon per "
            "state_dir and runtime_dir: stop it first, or give this one its own directories"
        ) from None
    if writable:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (systemd's LimitNOFILE=); returns the soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
