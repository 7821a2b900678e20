"""Benchmark: rolling token rotation under load (not a test).

For each replica count: the simulator, `tunnelkeeper run` with N cloudflared-sim replicas and a
file token source, a steady load through the sim entry, then several rotations (secret refreshed
through the sim API, new token written by atomic rename). Measured per rotation: the time from
the write until every replica is a ready primary on the new token and the sim lists only new
connectors; per replica, its time to ready and its drain time (from the daemon's log). The target
is 0 failed requests and rotation time <= replicas x (time to ready + drain) + 2 s.

    .venv/bin/python bench/rotation.py [--replicas 2 4] [--rotations 4] [--min-requests 5000]

Prints a table and writes bench/results/rotation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.strays import refuse_strays  # noqa: E402
from tests.harness import Daemon, Load, Sim, daemon_config, start_daemon, start_sim  # noqa: E402
from tests.origin import Origin  # noqa: E402
from tests.waiting import wait_until  # noqa: E402
from tunnelkeeper.tunneltoken import TunnelToken  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "rotation.json"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    os.replace(tmp, path)


def refresh_via_api(sim: Sim) -> str:
    import base64

    import httpx

    tid = sim.info["tunnels"]["portal"]
    base = f"{sim.api}/accounts/{sim.info['account_id']}/cfd_tunnel/{tid}"
    headers = {"Authorization": f"Bearer {sim.info['api_token']}"}
    secret = base64.b64encode(os.urandom(32)).decode()
    httpx.patch(
        base, json={"tunnel_secret": secret}, headers=headers, timeout=10
    ).raise_for_status()
    r = httpx.get(f"{base}/token", headers=headers, timeout=10)
    r.raise_for_status()
    token: str = r.json()["result"]
    return token


def rolled(d: Daemon, sim: Sim, fp: str, replicas: int) -> bool:
    reps = d.tunnel("portal")["replicas"]
    return (
        len(reps) == replicas
        and all(r["role"] == "primary" for r in reps)
        and all(r["token_fingerprint"] == fp and r["ready_connections"] > 0 for r in reps)
        and sim.live_connector_ids("portal") == {r["connector_id"] for r in reps}
    )


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def replica_timings(log_text: str, since: float, until: float) -> tuple[list[float], list[float]]:
    """Times to ready of rotation successors and drain times of the replicas they replaced,
    for daemon log events between the wall-clock instants ``since`` and ``until``."""
    events = []
    for line in log_text.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and "timestamp" in e and since <= _at(e) <= until + 30:
            events.append(e)
    ready = [
        float(e["startup_seconds"])
        for e in events
        if e.get("event") == "replica_ready" and e.get("generation", 1) > 1 and _at(e) <= until
    ]
    draining = {
        e["pid"]: _at(e)
        for e in events
        if e.get("event") == "replica_draining" and e.get("reason") == "rotation"
    }
    drains = [
        _at(e) - draining[e["pid"]]
        for e in events
        if e.get("event") == "replica_exited" and e.get("pid") in draining
    ]
    return ready, drains


def run(
    replicas: int, rotations: int, rate: float, loads: int, min_requests: int
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"tk-bench-rotation-{replicas}-"))
    with Origin() as origin:
        sim = start_sim(work / "sim", {"portal": origin.url})
        d: Daemon | None = None
        try:
            token_file = work / "portal.token"
            write_atomically(token_file, sim.token("portal") + "\n")
            cfg = daemon_config(
                work,
                sim,
                tunnels={
                    "portal": {
                        "replicas": replicas,
                        "token": f'{{ source = "file", path = "{token_file}", '
                        "poll_seconds = 0.5 }",
                    }
                },
            )
            d = start_daemon(cfg)
            d.wait_ready("portal", replicas, timeout=60)
            generators = [Load(sim, "portal", rate_per_second=rate) for _ in range(loads)]
            rows = []
            started = time.monotonic()
            for g in generators:
                g.__enter__()
            try:
                wait_until(lambda: sum(g.total for g in generators) >= 100, timeout=20)
                for _ in range(rotations):
                    token = refresh_via_api(sim)
                    fp = TunnelToken.parse(token).fingerprint
                    wall0, t0 = time.time(), time.monotonic()
                    write_atomically(token_file, token + "\n")
                    wait_until(
                        lambda fp=fp: rolled(d, sim, fp, replicas), timeout=120, interval=0.02
                    )
                    seconds = time.monotonic() - t0
                    ready, drains = replica_timings(d.output(), wall0, time.time())
                    per_replica = (max(ready, default=0.0)) + (max(drains, default=0.0))
                    rows.append(
                        {
                            "rotation_seconds": round(seconds, 3),
                            "max_time_to_ready_seconds": round(max(ready, default=0.0), 3),
                            "max_drain_seconds": round(max(drains, default=0.0), 3),
                            "budget_seconds": round(replicas * per_replica + 2.0, 3),
                        }
                    )
                wait_until(
                    lambda: sum(g.total for g in generators) >= min_requests,
                    timeout=min_requests / (rate * loads) * 3 + 30,
                    interval=0.2,
                )
            finally:
                for g in generators:
                    g.__exit__(None, None, None)
            elapsed = time.monotonic() - started
            total = sum(g.total for g in generators)
            failed = sum(g.failed for g in generators)
            failures = [f for g in generators for f in g.failures][:10]
            return {
                "replicas": replicas,
                "requests": total,
                "failed": failed,
                "failures_sample": failures,
                "achieved_rate_per_second": round(total / elapsed, 1),
                "rotations": rows,
                "within_budget": all(r["rotation_seconds"] <= r["budget_seconds"] for r in rows),
            }
        finally:
            if d is not None:
                d.stop()
            sim.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, nargs="+", default=[2, 4])
    p.add_argument("--rotations", type=int, default=4)
    p.add_argument("--rate", type=float, default=120.0, help="per load generator")
    p.add_argument("--loads", type=int, default=2, help="load generator threads")
    p.add_argument("--min-requests", type=int, default=5000, help="per replica count")
    args = p.parse_args()
    refuse_strays()  # after the arguments: --help needs no clean machine
    results = [
        run(n, args.rotations, args.rate, args.loads, args.min_requests) for n in args.replicas
    ]
    print(
        f"{'replicas':>8} {'requests':>9} {'failed':>6} {'rate/s':>7} "
        f"{'rotation s (each)':<30} {'budget s (each)':<30} ok"
    )
    for r in results:
        rot = " ".join(f"{x['rotation_seconds']:.2f}" for x in r["rotations"])
        bud = " ".join(f"{x['budget_seconds']:.2f}" for x in r["rotations"])
        ok = r["failed"] == 0 and r["within_budget"]
        print(
            f"{r['replicas']:>8} {r['requests']:>9} {r['failed']:>6} "
            f"{r['achieved_rate_per_second']:>7.0f} {rot:<30} {bud:<30} {'yes' if ok else 'NO'}"
        )
    total = sum(r["requests"] for r in results)
    failed = sum(r["failed"] for r in results)
    print(f"total: {total} requests, {failed} failed")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "rotation",
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "args": vars(args),
                "total_requests": total,
                "total_failed": failed,
                "runs": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if failed == 0 and all(r["within_budget"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
