"""Supervision benchmark: kill -9 → replacement ready, partition → replacement ready, and
tunnelkeeper's own CPU and memory while supervising 4 replicas with 1 s probes.

"Ready" is measured at the edge: the simulated edge's live connector count for the tunnel is
polled every 10 ms, so the figure is what Cloudflare would see, not what tunnelkeeper believes.

    .venv/bin/python -m bench.supervision [--runs 20] [--idle-seconds 60]

Prints a table and writes bench/results/supervision.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.strays import refuse_strays
from tests.harness import Sim, daemon_config, start_daemon, start_sim
from tests.origin import Origin


def live_connectors(sim: Sim, tunnel: str) -> dict[str, int]:
    conns = sim.state()["result"]["tunnels"][tunnel]["connectors"]
    return {cid: c["live_connections"] for cid, c in conns.items() if c["live_connections"] > 0}


def wait_for(pred: Any, timeout: float = 30.0, interval: float = 0.01) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError("condition not reached")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "runs": len(values),
        "median_s": round(statistics.median(values), 3),
        "p99_s": round(percentile(values, 0.99), 3),
        "max_s": round(max(values), 3),
    }


def bench_kill(sim: Sim, d: Any, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        d.wait_ready("portal", 2)
        wait_for(lambda: len(live_connectors(sim, "portal")) == 2)
        # The scenario is a healthy, long-running replica that dies (a replica that dies within
        # seconds of starting is a crash loop and gets backoff): wait until one has been up
        # longer than tunnelkeeper's 5 s stability window.
        wait_for(lambda: max(r["uptime_seconds"] for r in d.primaries("portal")) >= 6, 30, 0.2)
        victim = max(d.primaries("portal"), key=lambda r: r["uptime_seconds"])
        before = set(live_connectors(sim, "portal"))
        t0 = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        t1 = wait_for(lambda: len(set(live_connectors(sim, "portal")) - before) >= 1)
        out.append(t1 - t0)
        wait_for(lambda: len(d.primaries("portal")) == 2, timeout=10)
    return out


def bench_partition(sim: Sim, d: Any, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        prim = d.wait_ready("portal", 2)
        wait_for(lambda: len(live_connectors(sim, "portal")) == 2)
        before = set(live_connectors(sim, "portal"))
        victim = prim[0]["connector_id"]
        t0 = time.monotonic()
        sim.fault("partition", connector_id=victim)
        # replaced: a new replica is primary in the victim's place, and connected at the edge
        # (a successor started early is only a standby until then: it is drained if the victim
        # recovers first, so the partition lasts until the takeover)
        t1 = wait_for(
            lambda: (
                victim not in {r["connector_id"] for r in d.primaries("portal")}
                and len(set(live_connectors(sim, "portal")) - before) >= 1
            ),
            timeout=60,
        )
        out.append(t1 - t0)
        sim.fault("heal")
        wait_for(
            lambda: victim not in {r["connector_id"] for r in d.tunnel("portal")["replicas"]},
            timeout=30,
        )
    return out


def bench_idle(sim: Sim, workdir: Path, seconds: float) -> dict[str, float]:
    (workdir / "idle").mkdir()
    cfg = daemon_config(workdir / "idle", sim, tunnels={"portal": {"replicas": 4}})
    text = cfg.read_text().replace("probe_interval_seconds = 0.5", "probe_interval_seconds = 1")
    cfg.write_text(text)
    d = start_daemon(cfg)
    try:
        d.wait_ready("portal", 4)
        time.sleep(5)  # let start-up settle before measuring
        p = psutil.Process(d.proc.pid)
        c0, t0 = p.cpu_times(), time.monotonic()
        rss = []
        while time.monotonic() - t0 < seconds:
            rss.append(p.memory_info().rss)
            time.sleep(1)
        c1, t1 = p.cpu_times(), time.monotonic()
        cpu = (c1.user + c1.system - c0.user - c0.system) / (t1 - t0)
        return {
            "replicas": 4,
            "seconds": round(t1 - t0, 1),
            "cpu_percent_of_core": round(100 * cpu, 3),
            "rss_mb_max": round(max(rss) / 2**20, 1),
            "rss_mb_median": round(statistics.median(rss) / 2**20, 1),
        }
    finally:
        d.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--idle-seconds", type=float, default=60)
    args = ap.parse_args()
    refuse_strays()  # after the arguments: --help needs no clean machine
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tk-bench-") as tmp, Origin() as origin:
        work = Path(tmp)
        sim = start_sim(work / "sim", {"portal": origin.url})
        try:
            cfg = daemon_config(work, sim, tunnels={"portal": {"unhealthy_after_seconds": 3}})
            d = start_daemon(cfg)
            try:
                results["kill9_to_replacement_ready"] = summary(bench_kill(sim, d, args.runs))
                part = bench_partition(sim, d, args.runs)
                results["partition_to_replacement_ready"] = summary(part)
                results["partition_to_replacement_ready"]["unhealthy_after_seconds"] = 3
                results["partition_to_replacement_ready"]["beyond_unhealthy_after"] = summary(
                    [p - 3 for p in part]
                )
            finally:
                d.stop()
            results["idle_4_replicas_1s_probes"] = bench_idle(sim, work, args.idle_seconds)
        finally:
            sim.stop()
    out = Path(__file__).parent / "results" / "supervision.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    k, p, i = (
        results["kill9_to_replacement_ready"],
        results["partition_to_replacement_ready"],
        results["idle_4_replicas_1s_probes"],
    )
    print(f"{'measure':44} {'median':>8} {'p99':>8} {'runs':>5}")
    print(
        f"{'kill -9 -> replacement ready at edge (s)':44} {k['median_s']:8.3f} {k['p99_s']:8.3f} {k['runs']:5}"
    )
    print(
        f"{'partition -> replacement ready at edge (s)':44} {p['median_s']:8.3f} {p['p99_s']:8.3f} {p['runs']:5}"
    )
    b = p["beyond_unhealthy_after"]
    print(f"{'  of which beyond unhealthy_after=3s (s)':44} {b['median_s']:8.3f} {b['p99_s']:8.3f}")
    print(
        f"idle, 4 replicas, 1 s probes: {i['cpu_percent_of_core']}% of a core, "
        f"RSS max {i['rss_mb_max']} MB (median {i['rss_mb_median']} MB) over {i['seconds']} s"
    )
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
