"""Overhead and scale: tunnelkeeper's own CPU and memory supervising 4, 20, 100 and 250 replicas
(tunnels of 4 replicas each, 25 tunnels at 100; 10 tunnels of 25 at 250) with 1 s probes, beside supervisord supervising
the same number of cloudflared-sim processes; probe latency and loop lag from tunnelkeeper's
/metrics.

CPU is the supervisor process's own user+system time over the window divided by the window
(100 % = one core); RSS is sampled every second. /metrics is read every 5 s during the window
(like a Prometheus scraping it), and that cost is included.

    .venv/bin/python -m bench.scale [--sizes 4,20,100] [--supervisord-sizes 4,20,100] [--window 60]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.alternatives import RESULTS, cloudflared_argv, free_ports, start_supervisord, tk_config
from bench.strays import refuse_strays
from bench.supervision import live_connectors, percentile
from tests.harness import Daemon, Sim, start_daemon, start_sim
from tests.waiting import wait_until

PER_TUNNEL = 4
METRICS_EVERY_S = 5.0


def per_tunnel(n: int) -> int:
    """Tunnels of 4 replicas up to 100 (25 tunnels); beyond, tunnels of 25 (the per-tunnel
    limit): 250 replicas are 10 tunnels of 25."""
    return PER_TUNNEL if n <= 100 else 25


def tunnel_names(n: int) -> list[str]:
    return [f"t{i:02d}" for i in range(n // per_tunnel(n))]


@contextlib.contextmanager
def supervising(work: Path, n: int) -> Iterator[Daemon]:
    """A simulator and a daemon supervising ``n`` replicas laid out as in this bench, once
    every replica is ready; both stopped afterwards."""
    per = per_tunnel(n)
    names = tunnel_names(n)
    sim = start_sim(work / "sim", {t: "builtin" for t in names})
    try:
        tunnels = {t: {"replicas": per, "unhealthy_after_seconds": 20} for t in names}
        d = start_daemon(tk_config(work / "tk", sim, tunnels))
        try:
            wait_until(
                lambda: all(t["ready_replicas"] == per for t in d.status()["tunnels"]),
                timeout=300,
                interval=1,
                what=f"{n} replicas ready",
            )
            yield d
        finally:
            d.stop(timeout=120)
    finally:
        sim.stop()


def parse_metrics(text: str) -> dict[str, float]:
    """The few unlabelled/histogram samples we read, keyed by name plus ``le`` for buckets."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        for family, prefix in (
            ("tunnelkeeper_probe_duration_seconds", ""),
            ("tunnelkeeper_loop_lag_seconds", "lag_"),
        ):
            if not line.startswith(family):
                continue
            name, value = line.rsplit(" ", 1)
            if "_bucket{" in name:
                out[prefix + "le=" + name.split('le="')[1].split('"')[0]] = float(value)
            elif name.endswith("_sum"):
                out[prefix + "sum"] = float(value)
            elif name.endswith("_count"):
                out[prefix + "count"] = float(value)
    return out


def lag_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Loop lag over the window from the histogram's increase (bucket upper bounds)."""
    strip = {k[4:]: v for k, v in after.items() if k.startswith("lag_")}
    base = {k[4:]: v for k, v in before.items() if k.startswith("lag_")}
    figures = probe_figures(base, strip)
    return {"p50_ms": figures.get("p50_ms", 0.0), "p99_ms": figures.get("p99_ms", 0.0)}


def probe_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Probe latency over the window, from the histogram's increase (bucket upper bounds)."""
    count = after.get("count", 0) - before.get("count", 0)
    if count <= 0:
        return {"probes": 0}
    buckets = sorted(
        (float(k[3:]), after[k] - before.get(k, 0)) for k in after if k.startswith("le=")
    )

    def quantile(q: float) -> float:
        return next((le for le, c in buckets if c >= q * count), float("inf"))

    return {
        "probes": int(count),
        "mean_ms": round(1000 * (after["sum"] - before.get("sum", 0)) / count, 2),
        "p50_ms": round(1000 * quantile(0.5), 1),
        "p99_ms": round(1000 * quantile(0.99), 1),
        "measured_by": "tunnelkeeper_probe_duration_seconds (bucket upper bounds)",
    }


def time_probes(ports: list[int]) -> list[float]:
    """GET /ready on each port, as tunnelkeeper's prober does; seconds each."""
    out = []
    with httpx.Client(timeout=5) as client:
        for port in ports:
            t0 = time.monotonic()
            try:
                client.get(f"http://127.0.0.1:{port}/ready")
            except httpx.HTTPError:
                continue
            out.append(time.monotonic() - t0)
    return out


def memory_breakdown(pid: int) -> dict[str, float]:
    """The end of the window's resident memory split (/proc/PID/smaps_rollup): anonymous (the
    process's own heap and stacks) and file-backed (code of the interpreter and the shared
    libraries, e.g. OpenSSL, shared with every other process that maps them), and PSS (shared
    pages divided among the processes that map them)."""
    fields = {"Rss": "rss", "Pss": "pss", "Anonymous": "anon"}
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in fields:
                    out[f"{fields[key]}_mb_end"] = round(int(rest.split()[0]) / 1024, 1)
    except OSError:
        return {}
    if "rss_mb_end" in out and "anon_mb_end" in out:
        out["file_mb_end"] = round(out["rss_mb_end"] - out["anon_mb_end"], 1)
    return out


def watch(
    pid: int, window: float, metrics_url: str | None = None, ports: list[int] | None = None
) -> dict[str, Any]:
    """CPU and RSS of ``pid`` over ``window`` seconds; loop lag and probes if tunnelkeeper."""
    p = psutil.Process(pid)
    scrape = (
        (lambda: parse_metrics(httpx.get(metrics_url, timeout=5).text)) if metrics_url else None
    )
    first = scrape() if scrape else {}
    probes: list[float] = []
    c0, t0 = p.cpu_times(), time.monotonic()
    rss: list[int] = []
    next_scrape = t0 + METRICS_EVERY_S
    while time.monotonic() - t0 < window:
        rss.append(p.memory_info().rss)
        if ports:
            probes += time_probes(random.sample(ports, min(5, len(ports))))
        if scrape and time.monotonic() >= next_scrape:
            scrape()  # as Prometheus would
            next_scrape += METRICS_EVERY_S
        time.sleep(1)
    c1, t1 = p.cpu_times(), time.monotonic()
    last = scrape() if scrape else {}
    out: dict[str, Any] = {
        "seconds": round(t1 - t0, 1),
        "cpu_percent_of_core": round(
            100 * max(0.0, (c1.user - c0.user) + (c1.system - c0.system)) / (t1 - t0), 2
        ),
        "rss_mb_max": round(max(rss) / 2**20, 1),
        "rss_mb_median": round(statistics.median(rss) / 2**20, 1),
        **memory_breakdown(pid),
    }
    if scrape:
        lag = lag_figures(first, last)
        out["loop_lag_ms_p99"] = lag["p99_ms"]
        out["loop_lag_ms_median"] = lag["p50_ms"]
        out["probe"] = probe_figures(first, last)
        out["probe"]["probes_per_second"] = round(out["probe"]["probes"] / (t1 - t0), 1)
        if not out["probe"]["probes"] and probes:  # the histogram is not fed: time them here
            out["probe"] = {
                "measured_by": "the bench: GET /ready on 5 random replicas every second",
                "probes": len(probes),
                "mean_ms": round(1000 * statistics.mean(probes), 2),
                "p50_ms": round(1000 * statistics.median(probes), 2),
                "p99_ms": round(1000 * percentile(probes, 0.99), 2),
            }
    return out


def children_rss_mb(pid: int) -> float:
    total = 0
    for c in psutil.Process(pid).children(recursive=True):
        try:
            total += c.memory_info().rss
        except psutil.Error:
            continue
    return round(total / 2**20)


def measure_tk(work: Path, sim: Sim, n: int, window: float, settle: float) -> dict[str, Any]:
    per = per_tunnel(n)
    tunnels = {t: {"replicas": per, "unhealthy_after_seconds": 20} for t in tunnel_names(n)}
    d = start_daemon(tk_config(work / f"tk-{n}", sim, tunnels))
    try:
        t0 = time.monotonic()
        wait_until(
            lambda: all(t["ready_replicas"] == per for t in d.status()["tunnels"]),
            timeout=300,
            interval=1,
            what=f"{n} replicas ready",
        )
        ready_s = time.monotonic() - t0
        time.sleep(settle)  # let start-up settle before measuring
        ports = [r["metrics_port"] for t in d.status()["tunnels"] for r in t["replicas"]]
        res = watch(d.proc.pid, window, d.url + "/metrics", ports)
        res.update(
            replicas=n,
            all_ready_after_s=round(ready_s, 1),
            replicas_rss_mb_total=children_rss_mb(d.proc.pid),
        )
        res["restarts_during_start"] = sum(
            s["restarts"] for t in d.status()["tunnels"] for s in t["slots"]
        )
        return res
    finally:
        d.stop(timeout=120)


def measure_supervisord(
    work: Path, sim: Sim, n: int, window: float, settle: float, stoppers: list[threading.Thread]
) -> dict[str, Any]:
    names = [(t, i) for t in tunnel_names(n) for i in range(per_tunnel(n))]
    programs = {
        f"{t}_{i}": cloudflared_argv(sim, t, port)
        for (t, i), port in zip(names, free_ports(n), strict=True)
    }
    s = start_supervisord(work / f"supervisord-{n}", programs, "t00")
    try:
        t0 = time.monotonic()

        def live() -> bool:
            tunnels = sim.state()["result"]["tunnels"]
            return (
                sum(
                    1
                    for t in tunnel_names(n)
                    for c in tunnels[t]["connectors"].values()
                    if c["live_connections"]
                )
                >= n
            )

        wait_until(live, timeout=300, interval=1, what=f"{n} supervisord replicas live")
        ready_s = time.monotonic() - t0
        time.sleep(settle)
        res = watch(s.procs[0].pid, window)
        res.update(
            replicas=n,
            all_ready_after_s=round(ready_s, 1),
            replicas_rss_mb_total=children_rss_mb(s.procs[0].pid),
        )
        return res
    finally:
        # supervisord reaps its stopped children about one a second: let it, in the background
        stoppers.append(threading.Thread(target=s.stop, name=f"stop supervisord {n}"))
        stoppers[-1].start()


def run(
    work: Path, sizes: list[int], sd_sizes: list[int], window: float, settle: float
) -> dict[str, Any]:
    most = max((tunnel_names(n) for n in sizes + sd_sizes), key=len)
    sim = start_sim(work / "sim", {t: "builtin" for t in most})
    out: dict[str, Any] = {
        "window_s": window,
        "probe_interval_s": 1.0,
        "tunnelkeeper": {},
        "supervisord": {},
    }
    stoppers: list[threading.Thread] = []
    try:
        for n in sd_sizes:
            out["supervisord"][str(n)] = measure_supervisord(work, sim, n, window, settle, stoppers)
            wait_until(
                lambda: not any(live_connectors(sim, t) for t in tunnel_names(n)),
                60,
                0.5,
                what="supervisord's replicas gone",
            )
        for n in sizes:
            out["tunnelkeeper"][str(n)] = measure_tk(work, sim, n, window, settle)
    finally:
        for t in stoppers:
            t.join()
        sim.stop()
    return out


def table(res: dict[str, Any]) -> list[str]:
    lines = [
        f"{'supervisor':13} {'replicas':>8} {'CPU % core':>10} {'RSS MB':>7} {'ready after s':>13} "
        f"{'loop lag ms p50/p99':>20} {'probe ms mean/p99':>20} {'CPU µs/replica/s':>17}"
    ]
    for who in ("tunnelkeeper", "supervisord"):
        for n, r in res[who].items():
            lag = (
                f"{r['loop_lag_ms_median']}/{r['loop_lag_ms_p99']}"
                if "loop_lag_ms_p99" in r
                else "-"
            )
            pr = r.get("probe", {})
            probe = f"{pr['mean_ms']}/{pr['p99_ms']}" if pr.get("probes") else "-"
            lines.append(
                f"{who:13} {n:>8} {r['cpu_percent_of_core']:>10} {r['rss_mb_max']:>7} "
                f"{r['all_ready_after_s']:>13} {lag:>20} {probe:>20} "
                f"{round(1e4 * r['cpu_percent_of_core'] / int(n)):>17}"
            )
    lines.append(f"(window {res['window_s']:g} s, 1 s probes; RSS is the supervisor process alone)")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="4,20,100")
    ap.add_argument("--supervisord-sizes", default="4,20,100")
    ap.add_argument("--window", type=float, default=60)
    ap.add_argument("--settle", type=float, default=10)
    args = ap.parse_args(argv)
    refuse_strays()  # after the arguments: --help needs no clean machine
    sizes = [int(x) for x in args.sizes.split(",") if x]
    sd = [int(x) for x in args.supervisord_sizes.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="tk-bench-scale-") as tmp:
        res = run(Path(tmp), sizes, sd, args.window, args.settle)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(res, indent=2))
    print("\n".join(table(res)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
