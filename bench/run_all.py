"""Every benchmark in one run: prints one table and writes bench/results/*.json.

    .venv/bin/python -m bench.run_all            # full: >= 20 runs each, measured defaults (~25 min)
    .venv/bin/python -m bench.run_all --quick    # under 5 minutes on 2 cores: fewer runs, the
                                                 # default Prometheus chain computed, short windows

The Prometheus + Alertmanager chains (detection) run in a background thread from the start,
since they mostly wait; everything else runs one after the other. A full run then also runs the
sibling benchmarks bench/supervision.py (kill -9/partition -> ready, idle cost) and
bench/rotation.py (rotation under load); a quick run shows their last saved figures, with age.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import alternatives, detection, scale, startup
from bench.alternatives import RESULTS, cell, is_never
from bench.prometheus_chain import ChainsInBackground
from bench.strays import refuse_strays
from tests.harness import start_sim

ROOT = Path(__file__).resolve().parent.parent
MODES: dict[str, dict[str, Any]] = {
    "quick": {
        "detection": {"runs": 3, "slow_runs": 1, "chain_runs": 5, "measure_defaults": False},
        "alternatives": {"runs": 3, "never_rounds": 1, "never_wait": 12.0},
        "scale": {"sizes": [4, 20, 100], "sd_sizes": [100], "window": 10.0, "settle": 2.0},
        "startup": {"runs": 5, "ready_runs": 2},
    },
    "full": {
        "detection": {"runs": 20, "slow_runs": 3, "chain_runs": 20, "measure_defaults": True},
        "alternatives": {"runs": 20, "never_rounds": 3, "never_wait": 30.0},
        "scale": {"sizes": [4, 20, 100], "sd_sizes": [4, 20, 100], "window": 60.0, "settle": 10.0},
        "startup": {"runs": 20, "ready_runs": 5},
    },
}


def stage(name: str, timings: dict[str, float], t0: float) -> None:
    timings[name] = round(time.monotonic() - t0, 1)
    print(f"[bench] {name} done after {timings[name]} s", file=sys.stderr, flush=True)


def run(work: Path, mode: str) -> dict[str, Any]:
    p, t0 = MODES[mode], time.monotonic()
    timings: dict[str, float] = {}
    d = p["detection"]
    chains = ChainsInBackground(
        work / "chains", d["chain_runs"], d["measure_defaults"], detection.FOR_SECONDS
    ).start()
    out: dict[str, Any] = {"mode": mode, "settings": p, "stage_done_after_s": timings}
    try:
        sim = start_sim(work / "det-sim", {"portal": "builtin"})
        try:
            tk = detection.tk_pages(work / "det-tk", sim, d["runs"], d["slow_runs"])
        finally:
            sim.stop()
        stage("detection (tunnelkeeper)", timings, t0)
        a = p["alternatives"]
        out["alternatives"] = alternatives.run_matrix(
            work / "alt", a["runs"], a["never_rounds"], a["never_wait"]
        )
        stage("alternatives", timings, t0)
        out["startup"] = startup.run(work / "startup", **p["startup"])
        stage("startup", timings, t0)
        s = p["scale"]
        out["scale"] = scale.run(
            work / "scale", s["sizes"], s["sd_sizes"], s["window"], s["settle"]
        )
        stage("scale", timings, t0)
    except BaseException:
        chains.result(abort=True)
        raise
    out["detection"] = detection.combine(tk, chains.result(), d["measure_defaults"])
    stage("detection (Prometheus chains)", timings, t0)
    out["siblings"] = run_siblings(run=mode == "full")
    if mode == "full":
        stage("supervision.py and rotation.py", timings, t0)
    return out


def pair(f: dict[str, Any] | None) -> str:
    """'median/p99' in seconds, or 'never'."""
    if is_never(f):
        return "never"
    if not f or "median_s" not in f:
        return "-"
    text = f"{cell(f)}/{cell(f, 'p99_s')}"
    return text + (" (calc)" if f.get("runs") == 0 else "")


SIBLINGS = {  # the other engineers' benchmarks: run in full mode, their last figures shown always
    "supervision": ["-m", "bench.supervision"],
    "rotation": ["bench/rotation.py"],
}


def run_siblings(run: bool) -> dict[str, Any]:
    """Run bench/supervision.py and bench/rotation.py (their tables go to stderr) if ``run``;
    either way return what their JSON files hold now."""
    out: dict[str, Any] = {}
    for name, args in SIBLINGS.items():
        if run:
            done = subprocess.run(
                [sys.executable, *args], cwd=ROOT, stdout=sys.stderr, timeout=3600, check=False
            )
            out[f"{name}_exit_code"] = done.returncode
        path = RESULTS / f"{name}.json"
        if path.exists():
            age_s = time.time() - path.stat().st_mtime  # wall clock: file ages, for people
            out[name] = {
                "ran_now": run,
                "age_minutes": round(age_s / 60),
                **json.loads(path.read_text()),
            }
    return out


def sibling_rows(sib: dict[str, Any]) -> list[tuple[str, list[str], str]]:
    rows: list[tuple[str, list[str], str]] = []
    sup = sib.get("supervision")
    if sup:
        tag = "" if sup["ran_now"] else f" ({sup['age_minutes']} min old)"
        for key, label in (
            ("kill9_to_replacement_ready", "kill -9 -> ready"),
            ("partition_to_replacement_ready", "partition -> ready"),
        ):
            if key in sup:
                rows.append((f"supervision.py: {label}{tag}", [pair(sup[key])], ""))
    rot = sib.get("rotation")
    if rot and "total_requests" in rot:
        tag = "" if rot["ran_now"] else f" ({rot['age_minutes']} min old)"
        n = sum(len(r.get("rotations", [])) for r in rot.get("runs", []))
        cell_ = f"{rot['total_failed']} of {rot['total_requests']}, {n} rotations"
        rows.append((f"rotation.py: failed requests{tag}", [cell_], "0"))
    return rows


def headline(res: dict[str, Any]) -> list[str]:
    det, alt, sc, st = res["detection"], res["alternatives"], res["scale"], res["startup"]
    tk, chains = det["tunnelkeeper"], det["prometheus_alertmanager"]
    cols = ["tunnelkeeper", "restart-loop", "supervisord", *[f"prom+am {c}" for c in chains]]
    rows: list[tuple[str, list[str], str]] = []

    def chain_cells(key: str) -> list[str]:
        return [pair(c.get(key)) for c in chains.values()]

    rows.append(
        (
            "page: exit, first page",
            [pair(tk["exit"]["first_page"]), "no pager", "no pager", *chain_cells("exit")],
            "p99 <= 1.5",
        )
    )
    rows.append(
        ("page: exit, ReplicaDown", [pair(tk["exit"]["ReplicaDown"]), "", ""], "p99 <= 1.5")
    )
    rows.append(
        (
            "page: partition",
            [
                pair(tk["partition"]["first_page"]),
                "no pager",
                "no pager",
                *chain_cells("partition_ha_connections"),
            ],
            "p99 <= 1.5",
        )
    )
    rows.append(
        ("  same, rule on tk's gauge", ["", "", "", *chain_cells("partition_tk_metric")], "")
    )
    rows.append(("page: sigstop", [pair(tk["sigstop"]["first_page"]), "no pager", "no pager"], ""))
    for fault in ("exit", "partition", "sigstop"):
        for what in ("reacts", "recovers"):
            vals = [pair(alt[fault].get(n, {}).get(what)) for n in cols[:3]]
            target = "p99 <= 1.5" if (fault, what) == ("exit", "recovers") else ""
            rows.append((f"{what}: {fault}", vals, target))
    for n in ("4", "20", "100"):
        cells = []
        for who in ("tunnelkeeper", None, "supervisord"):
            r = sc.get(who or "", {}).get(n)
            cells.append(f"{r['cpu_percent_of_core']}% {r['rss_mb_max']:.0f}MB" if r else "")
        target = {"4": "<1% <45MB", "100": "<5%"}.get(n, "")
        rows.append((f"CPU/RSS, {n} replicas", cells, target))
    big = sc["tunnelkeeper"].get("100")
    if big:
        pr = big.get("probe", {})
        rows.append(
            (
                "100 replicas: loop lag ms med/max",
                [f"{big['loop_lag_ms_median']}/{big['loop_lag_ms_max']}"],
                "",
            )
        )
        rows.append(
            (
                "100 replicas: probe ms mean/p99",
                [f"{pr.get('mean_ms', '-')}/{pr.get('p99_ms', '-')}"],
                "",
            )
        )
    rows += sibling_rows(res.get("siblings", {}))
    for key, label, target in (
        ("version", "--version", "< 0.2"),
        ("status", "status", ""),
        ("start_to_ready", "start -> READY=1", ""),
    ):
        rows.append((label, [pair(st[key])], target))
    table = [["seconds: median/p99", *cols, "target"]]
    table += [
        [label, *(vals + [""] * (len(cols) - len(vals))), target] for label, vals, target in rows
    ]
    widths = [max(len(r[i]) for r in table) + 1 for i in range(len(table[0]))]

    def fmt(cells: list[str]) -> str:
        return "".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)).rstrip()

    lines = [fmt(r) for r in table]
    lines += detection.ratio_lines(det["ratios"])
    return lines


def git_describe() -> str:
    """The commit measured, with "+changes" when the tree had uncommitted edits (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="under 5 minutes: fewer runs")
    args = ap.parse_args(argv)
    refuse_strays()  # after the arguments: --help needs no clean machine
    mode = "quick" if args.quick else "full"
    t0, commit = time.monotonic(), git_describe()
    with tempfile.TemporaryDirectory(prefix="tk-bench-all-") as tmp:
        res = run(Path(tmp), mode)
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    res["when"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")  # wall clock, for people
    end = git_describe()  # the code may change under a long run: say so
    res["commit"] = commit if end == commit else f"{commit} (then {end}: changed during the run)"
    RESULTS.mkdir(exist_ok=True)
    for key in ("detection", "alternatives", "scale", "startup"):
        (RESULTS / f"{key}.json").write_text(json.dumps({"mode": mode, **res[key]}, indent=2))
    lines = headline(res)
    notes = [
        f"mode {mode}, {res['elapsed_s']} s, commit {res['commit']}; tunnelkeeper for_seconds = {detection.FOR_SECONDS:g}; "
        "page = seconds beyond `for`; prom+am settings scrape/eval/for/group_wait: fast 1/1/5/1, "
        "tuned 15/15/30/10, default 60/60/60/30",
    ]
    if mode == "quick":
        notes.append(
            "quick mode: fewer runs than the >= 20 of a full run; the default chain is "
            "computed from its formula (calc), not measured"
        )
    res["table"] = lines + notes
    (RESULTS / "summary.json").write_text(json.dumps(res, indent=2))
    print("\n".join(lines + notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
