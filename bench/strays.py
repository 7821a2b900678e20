"""Refuse to measure while simulators or daemons from an earlier run are still going.

Benchmarks measure one machine's CPU, and processes left over skew every figure. A replica
outlives its daemon by design (the next daemon adopts it), so a run that crashed, or a daemon
killed without draining, leaves cloudflared-sim replicas behind; facing a closed edge, each
floods at ~40 % of a core. Set ``TK_BENCH_ALLOW_STRAYS=1`` to measure anyway.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def strays() -> list[tuple[int, str]]:
    """(pid, command line) of every cloudflared-sim, `tunnelkeeper run` and `tunnelkeeper sim`
    on the machine, other than this process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = [
                a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")
            ]
        except OSError:
            continue  # gone, or not ours to read
        argv = [a for a in argv if a]
        programs = {Path(a).name for a in argv[:2]}  # the program, or the script its python runs
        daemon = "tunnelkeeper" in programs and bool({"run", "sim"} & set(argv[1:3]))
        if "cloudflared-sim" in programs or daemon:
            found.append((int(entry.name), " ".join(argv)[:160]))
    return found


def refuse_strays() -> None:
    found = strays()
    if not found or os.environ.get("TK_BENCH_ALLOW_STRAYS"):
        return
    print(
        "bench: not measuring: these processes from an earlier run would skew every figure "
        "(stop them, or set TK_BENCH_ALLOW_STRAYS=1):",
        file=sys.stderr,
    )
    for pid, cmdline in found:
        print(f"  {pid} {cmdline}", file=sys.stderr)
    raise SystemExit(2)
