"""tunnelkeeper's cost while its replicas flood their logs, as real cloudflared does when the
edge refuses connections (~19,000 JSON lines a second per replica, three per dial attempt).

One tunnel of N replicas (default 4) whose ``--edge`` is a closed loopback port: every replica
runs cloudflared-sim's full-speed dial loop. Measured over the window: the daemon's CPU (user +
system, % of one core) and RSS, the replicas' log rate (bytes and lines written, from the log
files' sizes), the event loop's lag (tunnelkeeper_loop_lag_seconds), lines skipped by the relay,
and the log files' allocated size (holes punched behind the reader).

    .venv/bin/python -m bench.flood [--replicas 4] [--window 60]
    # the same flood under another checkout's daemon (e.g. before a change):
    .venv/bin/python -m bench.flood --daemon-python /path/to/other/.venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.alternatives import RESULTS
from bench.scale import lag_figures, parse_metrics
from bench.strays import refuse_strays
from tests.harness import daemon_config, start_daemon, start_sim
from tests.waiting import wait_until


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again once this returns


def log_sizes(runtime: Path) -> tuple[int, int]:
    """(bytes written, bytes allocated) over the replicas' log files."""
    written = allocated = 0
    for f in (runtime / "replicas").glob("*.log"):
        st = f.stat()
        written += st.st_size
        allocated += st.st_blocks * 512
    return written, allocated


def skipped(metrics: str, family: str = "tunnelkeeper_child_log_lines_skipped_total") -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(family + "{")
    )


def unread(metrics: str) -> float:
    return skipped(metrics, "tunnelkeeper_child_log_unread_bytes_total")


def run(work: Path, replicas: int, window: float, daemon_python: str | None) -> dict[str, Any]:
    sim = start_sim(work / "sim", {"portal": "builtin"})
    cfg = daemon_config(work, sim, tunnels={"portal": {"replicas": replicas}})
    cfg.write_text(cfg.read_text().replace(sim.edge, f"127.0.0.1:{closed_port()}"))
    prefix = [daemon_python] if daemon_python else None
    d = start_daemon(cfg, prefix=prefix)
    runtime = work / "run"
    try:
        wait_until(
            lambda: (
                len(list((runtime / "replicas").glob("*.log"))) >= replicas
                and log_sizes(runtime)[0] > replicas * 1_000_000
            ),
            timeout=60,
            what="every replica flooding",
        )
        p = psutil.Process(d.proc.pid)
        first = d.metrics()
        w0, _ = log_sizes(runtime)
        c0, t0 = p.cpu_times(), time.monotonic()
        rss, allocated = [], []
        while time.monotonic() - t0 < window:
            rss.append(p.memory_info().rss)
            allocated.append(log_sizes(runtime)[1])
            time.sleep(1)
        c1, t1 = p.cpu_times(), time.monotonic()
        last = d.metrics()
        w1, _ = log_sizes(runtime)
        secs = t1 - t0
        lag = lag_figures(parse_metrics(first), parse_metrics(last))
        lines = skipped(last) - skipped(first)
        return {
            "replicas": replicas,
            "seconds": round(secs, 1),
            "daemon": daemon_python or "this checkout",
            "cpu_percent_of_core": round(
                100 * ((c1.user - c0.user) + (c1.system - c0.system)) / secs, 2
            ),
            "rss_mb_max": round(max(rss) / 2**20, 1),
            "rss_mb_median": round(statistics.median(rss) / 2**20, 1),
            "log_mb_per_s": round((w1 - w0) / secs / 2**20, 2),
            "lines_skipped_per_s": round(lines / secs),
            "log_mb_per_s_left_unread": round((unread(last) - unread(first)) / secs / 2**20, 2),
            "log_allocated_mb_max": round(max(allocated) / 2**20, 1),
            "loop_lag_ms_p50": lag["p50_ms"],
            "loop_lag_ms_p99": lag["p99_ms"],
        }
    finally:
        stopped = time.monotonic()
        d.stop(timeout=60)
        stop_s = time.monotonic() - stopped
        orphans = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(work) in " ".join(p.info["cmdline"] or [])
            and "cloudflared" in " ".join(p.info["cmdline"] or [])
        ]
        for p in orphans:  # replicas the daemon left running: killed, and reported
            p.kill()
        sim.stop()
        print(f"stop_seconds {stop_s:.1f} orphaned_replicas {len(orphans)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--window", type=float, default=60)
    ap.add_argument("--daemon-python", default=None)
    args = ap.parse_args(argv)
    refuse_strays()  # after the arguments: --help needs no clean machine
    with tempfile.TemporaryDirectory(prefix="tk-bench-flood-") as tmp:
        res = run(Path(tmp), args.replicas, args.window, args.daemon_python)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flood.json").write_text(json.dumps(res, indent=2))
    for k, v in res.items():
        print(f"{k:22} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
