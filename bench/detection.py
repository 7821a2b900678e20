"""Fault -> page: tunnelkeeper's own alerting beside Prometheus + Alertmanager.

Latency is measured from the fault until the local webhook receiver has the POST, minus the
configured ``for`` (tunnelkeeper's ``for_seconds``, a rule's ``for:``): the delay the detector
adds on top of the hold time the operator chose.

tunnelkeeper (``tunnelkeeper run``, product timings: 1 s probes; signed webhook sink) supervises 4
replicas; a cloudflared.path wrapper makes each fault's replacement fail or start slowly, so the
page has to go out. Scenarios (see :data:`SCENARIOS`), each reporting the first page about the
replica or its tunnel and the alert that names the fault:

* ``exit``: kill -9, the replacements fail (exit 1) until the page arrives -> ReplicaDown;
* ``exit_slow_start``: kill -9, the replacement sleeps before exec (running, not yet ready);
* ``partition``: the simulated edge drops the replica's connections -> ReplicaNoEdgeConnections;
* ``sigstop``: the replica is hung, its replacement starts slowly.

The Prometheus + Alertmanager chains (bench.prometheus_chain) run in the same run, in a background
thread. The ``default`` chain takes about 5 minutes; without ``--measure-defaults`` it is computed
from the formula instead and labelled so.

    .venv/bin/python -m bench.detection [--runs 20] [--slow-runs 3] [--chain-runs 20]
                                        [--measure-defaults]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.alternatives import (
    RESULTS,
    alerts_toml,
    cell,
    figures,
    is_never,
    tk_config,
    webhook_secret_file,
)
from bench.prometheus_chain import CHAINS, ChainsInBackground
from bench.strays import refuse_strays
from tests.alerts.receiver import Receiver
from tests.harness import CLOUDFLARED_SIM, Daemon, Sim, start_daemon, start_sim
from tests.waiting import wait_until

FOR_SECONDS = 2.0
SLOW_START_SECONDS = FOR_SECONDS + 4  # the replacement's delay, so the page has to go out


# --- tunnelkeeper, fault by fault -----------------------------------------------------------------


def mode_wrapper(work: Path, flood_edge: str | None = None) -> tuple[Path, Path]:
    """A cloudflared.path wrapper: the replacement fails (``fail``) or starts slowly (``slow``).
    With ``flood_edge``, replicas of the tunnel named "flood" dial that (closed) address
    instead of the simulated edge: they flood their logs as real cloudflared does."""
    work.mkdir(parents=True, exist_ok=True)
    mode, wrapper = work / "replacement-mode", work / "cloudflared"
    redirect = ""
    if flood_edge:
        redirect = (
            'case "$*" in *-flood-*)\n  n=$#; prev=""\n  for a in "$@"; do\n'
            f'    [ "$prev" = --edge ] && a={flood_edge}\n'
            '    set -- "$@" "$a"; prev=$a\n  done\n  shift "$n";;\nesac\n'
        )
    wrapper.write_text(
        f'#!/bin/sh\nm=$(cat "{mode}" 2>/dev/null)\n[ "$m" = fail ] && exit 1\n'
        f'[ "$m" = slow ] && sleep {SLOW_START_SECONDS:g}\n{redirect}'
        f'exec {CLOUDFLARED_SIM} "$@"\n'
    )
    wrapper.chmod(0o755)
    return mode, wrapper


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pick_victim(d: Daemon, min_uptime: float) -> dict[str, Any]:
    """The oldest ready primary up for ``min_uptime``, once no alert is firing and no replacement
    is still under way (independent runs: an alert still firing, or holding before its resolve,
    would not page again, and a pending replacement would heal the next fault early)."""

    def ready() -> dict[str, Any]:
        status = d.status()
        # ReplicaCrashLooping (from the failing replacements) holds until the slot's next exit;
        # the flooding tunnel (--flood) is down for good
        firing = status["alerts_firing"]
        if [a for a in firing if not a.startswith("ReplicaCrashLooping") and "/flood" not in a]:
            return {}
        replicas = next(t for t in status["tunnels"] if t["name"] == "portal")["replicas"]
        if any(r["role"] != "primary" for r in replicas):
            return {}
        ok = [
            r for r in replicas if r["ready_connections"] > 0 and r["uptime_seconds"] >= min_uptime
        ]
        return max(ok, key=lambda r: r["uptime_seconds"]) if ok else {}

    return wait_until(ready, timeout=90, interval=0.2, what="a victim replica")


# scenario: (fault, what the replacement does, the alert that names the fault)
SCENARIOS: dict[str, tuple[str, str | None, str | None]] = {
    "partition": ("partition", None, "ReplicaNoEdgeConnections"),
    "sigstop": ("stop", "slow", None),
    "exit_slow_start": ("kill", "slow", "ReplicaDown"),
    "exit": ("kill", "fail", "ReplicaDown"),  # last: its failing restarts leave crash-loop state
}


def tk_pages(work: Path, sim: Sim, runs: int, slow_runs: int, flood: int = 0) -> dict[str, Any]:
    """Each scenario ``runs`` times (``slow_runs`` for the slow-replacement ones, which wait
    out their bounded wait): first page about the replica or its tunnel, and the named alert.
    With ``flood``, the same daemon also supervises that many replicas of a tunnel "flood"
    whose edge refuses connections (each floods its log at cloudflared's rate)."""
    rcv = Receiver().start()
    mode, wrapper = mode_wrapper(work, f"127.0.0.1:{closed_port()}" if flood else None)
    tunnels: dict[str, dict[str, Any]] = {"portal": {"replicas": 4, "unhealthy_after_seconds": 30}}
    if flood:
        tunnels["flood"] = {"replicas": flood, "unhealthy_after_seconds": 30}
    cfg = tk_config(
        work,
        sim,
        tunnels,
        cloudflared=str(wrapper),
        extra=alerts_toml(f"{rcv.url}/tk", webhook_secret_file(work), FOR_SECONDS),
    )
    d = start_daemon(cfg)
    res: dict[str, Any] = {"for_seconds": FOR_SECONDS, "slow_start_seconds": SLOW_START_SECONDS}
    started = time.monotonic()
    try:
        for scenario, (fault, replacement, alert) in SCENARIOS.items():
            first: list[float | None] = []
            named: list[float | None] = []
            names: set[str] = set()
            wait_s = 20.0 if replacement != "slow" else FOR_SECONDS + 10
            for _ in range(runs if replacement != "slow" else slow_runs):
                d.wait_ready("portal", 4, timeout=60)
                v = pick_victim(d, 7)  # ready > 5 s before it dies: not part of a crash loop
                if replacement:
                    mode.write_text(replacement)
                t0 = time.monotonic()
                if fault == "partition":
                    sim.fault("partition", connector_id=v["connector_id"])
                else:
                    os.kill(v["pid"], signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
                pages = watch_pages(rcv, t0, v["slot"], alert, wait_s)
                first.append(min(pages.values(), default=None))
                named.append(pages.get(alert or ""))
                names |= {n for n, at in pages.items() if at == first[-1]}
                if fault == "stop":  # let tunnelkeeper replace it before it may run again
                    wait_until(
                        lambda: v["pid"] not in {r["pid"] for r in d.tunnel("portal")["replicas"]},
                        timeout=60,
                        what="the hung replica replaced",
                    )
                mode.unlink(missing_ok=True)
                sim.fault("heal")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(v["pid"], signal.SIGCONT)
            res[scenario] = {"first_page": figures(first), "first_alerts": sorted(names)}
            if alert:
                res[scenario][alert] = figures(named)
            res[scenario]["never_wait_s"] = wait_s
        if flood:  # evidence that the flood ran: what its replicas wrote that was left unread
            unread = sum(
                float(line.rsplit(" ", 1)[1])
                for line in d.metrics().splitlines()
                if line.startswith("tunnelkeeper_child_log_unread_bytes_total{")
                and 'tunnel="flood"' in line
            )
            res["flood_left_unread_mb_per_s"] = round(
                unread / 2**20 / (time.monotonic() - started), 2
            )
    finally:
        d.stop()
        rcv.stop()
    return res


def watch_pages(
    rcv: Receiver, t0: float, slot: int, until: str | None, wait_s: float
) -> dict[str, float]:
    """alertname -> seconds beyond for_seconds of its first page about ``slot`` or its tunnel,
    collected until ``until`` (or, when None, any page) has arrived or ``wait_s`` has passed."""
    found: dict[str, float] = {}
    deadline = t0 + wait_s
    while time.monotonic() < deadline and not (found and (until is None or until in found)):
        time.sleep(0.01)
        for r in rcv.received("/tk"):
            try:
                alerts = r.json()["alerts"]
            except (ValueError, KeyError, TypeError):
                continue
            for a in alerts:
                lab = a.get("labels", {})
                if r.at >= t0 and a.get("status") == "firing" and lab.get("tunnel") == "portal":
                    if lab.get("slot") in (None, str(slot)):
                        found.setdefault(lab.get("alertname", "?"), r.at - t0 - FOR_SECONDS)
    return found


# --- both, and the comparison ---------------------------------------------------------------------


def ratio(a: dict[str, Any] | None, b: dict[str, Any], key: str, plus: float = 0.0) -> Any:
    """How many times longer chain ``a`` takes than tunnelkeeper ``b``; "never" if it never
    paged. ``plus`` adds each side's ``for`` back for a total fault -> page ratio."""
    if is_never(a):
        return "never"
    if a is None or key not in a or key not in b:
        return None
    return round((a[key] + plus) / max(b[key] + (FOR_SECONDS if plus else 0.0), 1e-3), 1)


def run(
    work: Path, runs: int, slow_runs: int, chain_runs: int, measure_defaults: bool, flood: int = 0
) -> dict[str, Any]:
    chains = ChainsInBackground(work / "chains", chain_runs, measure_defaults, FOR_SECONDS)
    chains.start()
    sim = start_sim(work / "sim", {"portal": "builtin", "flood": "builtin"})
    try:
        tk = tk_pages(work / "tk", sim, runs, slow_runs, flood)
        tk["flooding_replicas"] = flood
    except BaseException:
        chains.result(abort=True)
        raise
    finally:
        sim.stop()
    return combine(tk, chains.result(), measure_defaults)


def combine(tk: dict[str, Any], box: dict[str, Any], measured_defaults: bool) -> dict[str, Any]:
    chains: dict[str, Any] = box.get("chains", {})
    if not measured_defaults:
        chains["default"] = CHAINS[-1].computed()
    ratios: dict[str, Any] = {}
    first, down = tk["exit"]["first_page"], tk["exit"]["ReplicaDown"]
    part = tk["partition"]["ReplicaNoEdgeConnections"]
    for name, c in chains.items():
        for_s = c["settings"]["for_s"]
        ratios[name] = {  # chain / tunnelkeeper, seconds beyond `for` unless "total"
            "exit_first_page_median": ratio(c["exit"], first, "median_s"),
            "exit_first_page_p99": ratio(c["exit"], first, "p99_s"),
            "exit_first_page_total_median": ratio(c["exit"], first, "median_s", plus=for_s),
            "exit_replica_down_median": ratio(c["exit"], down, "median_s"),
            "exit_replica_down_p99": ratio(c["exit"], down, "p99_s"),
            "partition_cloudflared_metric": ratio(c["partition_ha_connections"], {}, "x"),
            "partition_tunnelkeeper_metric_median": ratio(
                c["partition_tk_metric"], part, "median_s"
            ),
            "partition_tunnelkeeper_metric_p99": ratio(c["partition_tk_metric"], part, "p99_s"),
        }
    tk = {
        **tk,
        "partition_same_run_as_chains": box.get("tunnelkeeper_same_run", {}).get("partition"),
    }
    out = {"tunnelkeeper": tk, "prometheus_alertmanager": chains, "ratios": ratios}
    if "error" in box:
        out["prometheus_alertmanager_error"] = box["error"]
    return out


def ratio_lines(ratios: dict[str, Any]) -> list[str]:
    return [
        f"prom+am {name} / tunnelkeeper: exit page median {r['exit_first_page_median']}x, p99 "
        f"{r['exit_first_page_p99']}x (total incl. for: {r['exit_first_page_total_median']}x; vs "
        f"ReplicaDown: {r['exit_replica_down_median']}x / {r['exit_replica_down_p99']}x); "
        f"partition: {r['partition_cloudflared_metric']} on cloudflared's metric, "
        f"{r['partition_tunnelkeeper_metric_median']}x / {r['partition_tunnelkeeper_metric_p99']}x "
        "on tunnelkeeper's"
        for name, r in ratios.items()
    ]


def table(res: dict[str, Any]) -> list[str]:
    tk, chains = res["tunnelkeeper"], res["prometheus_alertmanager"]
    lines = [
        f"fault -> page, seconds beyond `for` (tunnelkeeper for_seconds = {FOR_SECONDS:g})",
        f"{'detector':38} {'fault: page / rule':40} {'median':>8} {'p99':>8} {'runs':>5}",
    ]
    if tk.get("flooding_replicas"):
        lines.insert(
            1,
            f"(while the same daemon supervised {tk['flooding_replicas']} replicas flooding their "
            f"logs, {tk.get('flood_left_unread_mb_per_s')} MB/s of it left unread)",
        )
    rows = [
        ("tunnelkeeper", f"{label}: {key}", tk[scenario][key], "")
        for scenario, label in (
            ("exit", "exit"),
            ("exit_slow_start", "exit slow-start"),
            ("partition", "partition"),
            ("sigstop", "sigstop"),
        )
        for key in ("first_page", SCENARIOS[scenario][2])
        if key
    ]
    if tk.get("partition_same_run_as_chains"):
        rows.append(
            (
                "tunnelkeeper (beside the chains)",
                "partition",
                tk["partition_same_run_as_chains"],
                "",
            )
        )
    for name, c in chains.items():
        s = c["settings"]
        label = (
            f"prom+am {name} {s['scrape_s']:g}/{s['eval_s']:g}/{s['for_s']:g}/{s['group_wait_s']:g}"
        )
        tag = " (computed)" if c.get("computed") else ""
        rows += [
            (label, "exit: up==0", c["exit"], tag),
            (label, "partition: cf ha==0", c["partition_ha_connections"], tag),
            (label, "partition: tk ready==0", c["partition_tk_metric"], tag),
        ]
    for who, fault, f, tag in rows:
        runs = f["runs"] or "-"
        lines.append(f"{who:38} {fault:40} {cell(f):>8} {cell(f, 'p99_s'):>8} {runs:>5}{tag}")
    if "prometheus_alertmanager_error" in res:
        lines.append(f"Prometheus chains failed: {res['prometheus_alertmanager_error']}")
    lines += ratio_lines(res["ratios"])
    lines.append(
        "(chain settings: scrape/eval/for/group_wait seconds; never = no page within "
        "scrape+eval+for+group_wait+15 s)"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--slow-runs", type=int, default=3, help="runs of the slow-replacement ones")
    ap.add_argument("--chain-runs", type=int, default=20, help="replicas killed for the chains")
    ap.add_argument("--measure-defaults", action="store_true")
    ap.add_argument(
        "--flood", type=int, default=0, help="replicas of a second tunnel flooding their logs"
    )
    args = ap.parse_args(argv)
    refuse_strays()  # after the arguments: --help needs no clean machine
    with tempfile.TemporaryDirectory(prefix="tk-bench-det-") as tmp:
        res = run(
            Path(tmp), args.runs, args.slow_runs, args.chain_runs, args.measure_defaults, args.flood
        )
    RESULTS.mkdir(exist_ok=True)
    name = f"detection-flood{args.flood}.json" if args.flood else "detection.json"
    (RESULTS / name).write_text(json.dumps(res, indent=2))
    print("\n".join(table(res)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
