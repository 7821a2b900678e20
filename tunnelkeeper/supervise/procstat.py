"""A process's state, CPU time and resident memory from one read of ``/proc/<pid>/stat``.

Every metrics interval, each primary replica's CPU and memory are exported; through psutil
(a ``Process`` handle, ``oneshot``, ``cpu_times`` and ``memory_info``: two files and its
wrappers) that was 0.2 ms a replica, a tenth of the daemon's CPU at a hundred replicas
(``bench/README.md``). The same figures are three fields of one small file, read here with
three system calls. ``proc_pid_stat(5)``: after ``pid (comm)``, where comm may hold spaces and
parentheses (so the fields start after the last ")"), come state, ..., utime and stime (14th
and 15th, in clock ticks), ..., rss (24th, in pages).
"""

from __future__ import annotations

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_STATE, _UTIME, _STIME, _RSS = 0, 11, 12, 21  # indexes after "pid (comm) "


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after its command name; None if it cannot be read
    (the process is gone) or is not what the kernel writes."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        stat = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    end = stat.rfind(b")")
    fields = stat[end + 2 :].split() if end >= 0 else []
    return fields if len(fields) > _RSS else None


def is_stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped or traced right now (its state, T or t)."""
    fields = stat_fields(pid)
    return fields is not None and fields[_STATE] in (b"T", b"t")


def usage(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, user and system; resident bytes) of ``pid``, or None if it is gone."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    try:
        ticks = int(fields[_UTIME]) + int(fields[_STIME])
        return ticks / CLOCK_TICKS, int(fields[_RSS]) * PAGE_BYTES
    except ValueError:
        return None
