"""A replica stopped by a signal (SIGSTOP, SIGTSTP, a debugger) serves nothing: known at once.

For our own children the kernel says so the moment it happens (SIGCHLD; ``waitid`` with
``WSTOPPED | WCONTINUED`` and *without* ``WEXITED``, so exits stay with the pidfd reaper). For a
replica adopted from a previous daemon (not our child), a probe that gets no answer looks at its
state in ``/proc`` instead (``procstat.is_stopped``): a stopped process is not merely slow, so
there is no need to wait out ``unresponsive_after_seconds`` for it.
"""

from __future__ import annotations

import os

STOPPED = True
CONTINUED = False


def child_stop_change(pid: int) -> bool | None:
    """STOPPED or CONTINUED if our child ``pid`` did so since the last call; None if neither
    (or it is not our child, or has exited)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WSTOPPED | os.WCONTINUED | os.WNOHANG)
    except (ChildProcessError, OSError):
        return None
    if info is None:
        return None
    if info.si_code in (os.CLD_STOPPED, os.CLD_TRAPPED):
        return STOPPED
    if info.si_code == os.CLD_CONTINUED:
        return CONTINUED
    return None
