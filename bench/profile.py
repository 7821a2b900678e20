"""Where the daemon's CPU goes: py-spy samples a running ``tunnelkeeper run`` supervising N
replicas (tunnels of 4, 1 s probes) in its steady state, and this prints the functions that
hold the most samples, inclusive and self.

py-spy counts only samples where a thread is running Python (``--idle`` off), so the total
samples over the duration, divided by rate times duration, is the fraction of a core the
interpreter spent, within sampling error. Its shares lean towards system calls: reading a
stack without stopping the process (``--nonblocking``) succeeds more often while the thread
sits in the kernel. At 100 replicas it put 46 % of the samples in ``Wire._send``, where the
process's whole system time was 0.43 % of a core against 1.63 % of user time (its
``/proc`` times); cProfile inside the daemon gives the Python side's shares more faithfully
(bench/README.md, issue 16's sixth part). The figure printed at the end is an estimate to
compare runs by, not the process's CPU, which ``bench.scale`` measures.

    .venv/bin/pip install py-spy
    .venv/bin/python -m bench.profile [--replicas 100] [--seconds 30] [--rate 250]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scale import supervising


def frame_name(frame: str) -> str:
    """'Prober._exchange (tunnelkeeper/supervise/probe.py:80)' -> 'Prober._exchange probe.py'."""
    func, _, where = frame.partition(" (")
    return f"{func} {where.split(':')[0].rsplit('/', 1)[-1]}" if where else func


def summarise(raw: Path, top: int) -> list[str]:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [frame_name(f) for f in stack.split(";")]
        for name in set(frames):
            inclusive[name] += n
        own[frames[-1]] += n
    lines = [f"samples: {total}", "inclusive:"]
    lines += [f"  {100 * v / total:5.1f}%  {k}" for k, v in inclusive.most_common(top)]
    lines += ["self:"]
    lines += [f"  {100 * v / total:5.1f}%  {k}" for k, v in own.most_common(top)]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--rate", type=int, default=250)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--settle", type=float, default=10)
    args = ap.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with (
        tempfile.TemporaryDirectory(prefix="tk-bench-profile-") as tmp,
        supervising(Path(tmp), args.replicas) as d,
    ):
        work = Path(tmp)
        time.sleep(args.settle)
        raw = work / "profile.txt"
        subprocess.run(
            [
                spy,
                "record",
                "-p",
                str(d.proc.pid),
                "-d",
                str(int(args.seconds)),
                "-r",
                str(args.rate),
                "-f",
                "raw",
                "-o",
                str(raw),
                "--nonblocking",
            ],
            check=True,
            capture_output=True,
        )
        lines = summarise(raw, args.top)
    busy = int(lines[0].split()[1]) / (args.rate * args.seconds)
    print(
        f"{args.replicas} replicas, {args.seconds:g} s at {args.rate} Hz: "
        f"~{100 * busy:.1f}% of a core in Python"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
