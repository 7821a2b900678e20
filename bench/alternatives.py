"""tunnelkeeper beside the alternatives, on the same cloudflared-sim replicas and the same faults.

Supervisors compared, each with its own tunnel of 2 replicas on one simulated edge:

* ``restart-loop``: systemd's ``Restart=on-failure, RestartSec=5s`` (cloudflared's own unit),
  emulated by a small shell loop;
* ``supervisord``: the real pip ``supervisor``, ``autorestart=true``, its own config in a temp dir;
* ``tunnelkeeper``: ``tunnelkeeper run`` with product defaults (1 s probes, unresponsive after 3 s)
  and ``unhealthy_after_seconds = 3``.

Faults, injected into all three at the same moment: ``exit`` (kill -9 of a replica up for 6 s or
more), ``partition`` (the simulated edge drops the replica's connections and refuses new ones: alive
with 0 connections) and ``sigstop`` (hung process). Per fault and supervisor:

* *reacts*: fault -> the supervisor starts a replacement cloudflared process;
* *recovers*: fault -> a replacement connector is live at the simulated edge (what Cloudflare sees).

A supervisor that has not reacted within the bounded wait is recorded as "never".

    .venv/bin/python -m bench.alternatives [--runs 20] [--never-rounds 3] [--never-wait 30]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.strays import refuse_strays
from bench.supervision import live_connectors, percentile, wait_for
from tests.harness import (
    CLOUDFLARED_SIM,
    VENV_BIN,
    Daemon,
    Sim,
    daemon_config,
    start_daemon,
    start_sim,
    stop_process,
)
from tests.waiting import free_port

RESULTS = Path(__file__).parent / "results"
FAULTS = ("exit", "partition", "sigstop")
RESTART_LOOP = """#!/bin/sh
# systemd Restart=on-failure + RestartSec=5s, emulated: restart 5 s after any unclean exit.
trap 'kill -TERM "$child" 2>/dev/null; exit 0' TERM INT
while :; do
    "$@" & child=$!
    wait "$child"; rc=$?
    [ "$rc" -eq 0 ] && exit 0
    sleep 5 & child=$!
    wait "$child"
done
"""


# --- figures -------------------------------------------------------------------------------------


def figures(samples: list[float | None]) -> dict[str, Any]:
    """Median/p99 of the runs that reacted; ``never`` counts the runs that did not."""
    got = [s for s in samples if s is not None]
    out: dict[str, Any] = {"runs": len(samples), "never": len(samples) - len(got)}
    if got:
        out.update(
            median_s=round(statistics.median(got), 3),
            p99_s=round(percentile(got, 0.99), 3),
            max_s=round(max(got), 3),
        )
    return out


def is_never(f: dict[str, Any] | None) -> bool:
    """Every run ended without a reaction (or, for a computed figure, it cannot react)."""
    if not f:
        return False
    return bool(f.get("is_never")) or (f.get("runs", 0) > 0 and f.get("never") == f["runs"])


def cell(f: dict[str, Any] | None, key: str = "median_s") -> str:
    """One table cell: '0.42' or 'never' (with the count when only some runs never reacted)."""
    if is_never(f):
        return "never"
    if not f or key not in f:
        return "-"
    text = f"{f[key]:.2f}"
    return f"{text} ({f['never']} never)" if f.get("never") else text


# --- the supervisors -----------------------------------------------------------------------------


def cloudflared_argv(sim: Sim, tunnel: str, port: int) -> list[str]:
    """cloudflared's command line as a user would write it in a unit file (token in a file)."""
    return [
        CLOUDFLARED_SIM,
        "tunnel",
        "--no-autoupdate",
        "--metrics",
        f"127.0.0.1:{port}",
        "--output",
        "json",
        "--edge",
        sim.edge,
        "run",
        "--token-file",
        str(sim.token_file(tunnel)),
    ]


def replicas_under(root_pids: list[int]) -> dict[int, int]:
    """pid -> metrics port of every cloudflared-sim process below the given supervisors."""
    out: dict[int, int] = {}
    for root in root_pids:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(root).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    argv = child.cmdline()
                    if any(a.endswith("cloudflared-sim") for a in argv[:2]) and "--metrics" in argv:
                        out[child.pid] = int(argv[argv.index("--metrics") + 1].rsplit(":", 1)[1])
    return out


def connector_id(port: int) -> str | None:
    try:
        cid = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).json().get("connectorId")
    except (httpx.HTTPError, ValueError):
        return None
    return str(cid) if cid else None


class Supervised:
    """One supervisor running ``n`` replicas of its own tunnel; stopped by the pids it started."""

    def __init__(self, name: str, tunnel: str, n: int, procs: list[subprocess.Popen[bytes]]):
        self.name, self.tunnel, self.n, self.procs = name, tunnel, n, procs
        self.daemon: Daemon | None = None

    @property
    def roots(self) -> list[int]:
        return [p.pid for p in self.procs]

    def replicas(self) -> dict[int, int]:
        return replicas_under(self.roots)

    def stop(self) -> None:
        children = []
        for pid in self.replicas():
            with contextlib.suppress(psutil.Error):
                children.append(psutil.Process(pid))
        for proc in self.procs:
            stop_process(proc, timeout=30)
        # a shell loop stopped hard would orphan its child: stop what is left by pid, together
        alive = [c for c in children if c.is_running()]
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.send_signal(signal.SIGCONT)
                child.terminate()
        for child in psutil.wait_procs(alive, timeout=10)[1]:
            with contextlib.suppress(psutil.Error):
                child.kill()


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (free_port alone may hand out the same one twice)."""
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def start_restart_loop(work: Path, sim: Sim, tunnel: str, n: int) -> Supervised:
    script = work / "restart-loop.sh"
    script.write_text(RESTART_LOOP)
    procs = [
        subprocess.Popen(
            ["/bin/sh", str(script), *cloudflared_argv(sim, tunnel, port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in free_ports(n)
    ]
    return Supervised("restart-loop", tunnel, n, procs)


def supervisord_conf(work: Path, programs: dict[str, list[str]]) -> Path:
    lines = [
        "[unix_http_server]",
        f"file={work / 'supervisor.sock'}",
        "",
        "[supervisord]",
        f"logfile={work / 'supervisord.log'}",
        f"pidfile={work / 'supervisord.pid'}",
        f"childlogdir={work}",
        "nodaemon=true",
        "loglevel=warn",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{work / 'supervisor.sock'}",
        "",
    ]
    for name, argv in programs.items():
        lines += [
            f"[program:{name}]",
            "command=" + " ".join(argv),
            "autorestart=true",
            "startsecs=1",
            "stdout_logfile=NONE",
            "redirect_stderr=true",
            "stopwaitsecs=10",
            "",
        ]
    conf = work / "supervisord.conf"
    conf.write_text("\n".join(lines))
    return conf


def start_supervisord(work: Path, programs: dict[str, list[str]], tunnel: str) -> Supervised:
    work.mkdir(parents=True, exist_ok=True)
    conf = supervisord_conf(work, programs)
    proc = subprocess.Popen(
        [str(VENV_BIN / "supervisord"), "-n", "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Supervised("supervisord", tunnel, len(programs), [proc])


def tk_config(
    work: Path, sim: Sim, tunnels: dict[str, dict[str, Any]], *, extra: str = "", **kw: Any
) -> Path:
    """A `tunnelkeeper run` config with the product's default timings (probes every 1 s)."""
    work.mkdir(parents=True, exist_ok=True)
    cfg = daemon_config(work, sim, tunnels=tunnels, extra=extra, **kw)
    text = cfg.read_text()
    for old, new in (
        ("probe_interval_seconds = 0.5", "probe_interval_seconds = 1"),
        ("unresponsive_after_seconds = 2", "unresponsive_after_seconds = 3"),
        ("ready_timeout_seconds = 15", "ready_timeout_seconds = 60"),
    ):
        text = text.replace(old, new)
    cfg.write_text(text)
    return cfg


def alerts_toml(url: str, secret_file: Path, for_seconds: float) -> str:
    return (
        f"[alerts]\nfor_seconds = {for_seconds:g}\nresolve_hold_seconds = 1\n\n"
        f'[[alerts.sink]]\nkind = "webhook"\nurl = "{url}"\nsigning_secret_file = "{secret_file}"\n'
    )


def webhook_secret_file(work: Path) -> Path:
    path = work / "webhook.secret"
    path.write_text("whsec_" + base64.b64encode(os.urandom(32)).decode() + "\n")
    path.chmod(0o600)
    return path


def start_tunnelkeeper(work: Path, sim: Sim, tunnel: str, n: int) -> Supervised:
    cfg = tk_config(work, sim, {tunnel: {"replicas": n, "unhealthy_after_seconds": 3}})
    d = start_daemon(cfg)
    s = Supervised("tunnelkeeper", tunnel, n, [d.proc])
    s.daemon = d
    return s


# --- one fault, watched on every supervisor at once ----------------------------------------------


# A tunnelkeeper replica that dies within 5 s of becoming ready counts towards a crash loop
# (restart backoff), and supervisord's startsecs is 1 s: victims have been up this long.
MIN_UPTIME_S = {"tunnelkeeper": 6.0, "supervisord": 2.0, "restart-loop": 1.0}


def victims(sim: Sim, s: Supervised) -> list[tuple[int, int]] | None:
    """(pid, metrics port) of every replica, oldest first, once all n run and are live at the
    edge and the oldest has been up for its supervisor's minimum."""
    reps = s.replicas()
    if len(reps) != s.n or len(live_connectors(sim, s.tunnel)) != s.n:
        return None
    with contextlib.suppress(psutil.Error):
        born = {pid: psutil.Process(pid).create_time() for pid in reps}
        oldest = sorted(born, key=lambda p: born[p])
        if time.time() - born[oldest[0]] >= MIN_UPTIME_S[s.name]:  # wall clock: start times
            return [(pid, reps[pid]) for pid in oldest]
    return None


def inject(sim: Sim, fault: str, pid: int, port: int) -> None:
    if fault == "exit":
        os.kill(pid, signal.SIGKILL)
    elif fault == "sigstop":
        os.kill(pid, signal.SIGSTOP)
    else:
        cid = connector_id(port)
        if cid is None:
            raise RuntimeError(f"replica pid {pid} has no connector id")
        sim.fault("partition", connector_id=cid)


Sample = tuple[float | None, float | None]  # (reacts_s, recovers_s)


def fault_round(
    sim: Sim, plan: list[tuple[Supervised, str]], wait_s: float
) -> dict[tuple[str, str], Sample]:
    """Inject each (supervisor, fault) at once, into a different replica; watch until every
    supervisor has a replacement live at the edge or ``wait_s`` has passed."""
    sups = list({id(s): s for s, _ in plan}.values())
    pool: dict[str, list[tuple[int, int]]] = {}
    for s in sups:
        wait_for(lambda s=s: victims(sim, s), timeout=90, interval=0.1)
        pool[s.name] = victims(sim, s) or []
    before = {s.name: (set(s.replicas()), set(live_connectors(sim, s.tunnel))) for s in sups}
    start: dict[tuple[str, str], float] = {}
    hit: list[tuple[str, int]] = []
    for s, fault in plan:
        pid, port = pool[s.name].pop(0)
        start[(s.name, fault)] = time.monotonic()
        inject(sim, fault, pid, port)
        hit.append((fault, pid))
    reacts: dict[str, float] = {}
    recovers: dict[str, float] = {}
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and len(recovers) < len(sups):
        conns = sim.state()["result"]["tunnels"]
        for s in sups:
            now = time.monotonic()
            if s.name not in reacts and set(s.replicas()) - before[s.name][0]:
                reacts[s.name] = now
            live = {c for c, v in conns[s.tunnel]["connectors"].items() if v["live_connections"]}
            if s.name not in recovers and live - before[s.name][1]:
                recovers[s.name] = now
        time.sleep(0.01)
    if any(f == "partition" for f, _ in hit):
        sim.fault("heal")
    for fault, pid in hit:
        if fault == "sigstop":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    return {
        key: (
            reacts[key[0]] - t0 if key[0] in reacts else None,
            recovers[key[0]] - t0 if key[0] in recovers else None,
        )
        for key, t0 in start.items()
    }


def run_matrix(
    work: Path, runs: int, never_rounds: int, never_wait: float, replicas: int = 2
) -> dict[str, Any]:
    """Exit: every supervisor each round. Partition and SIGSTOP: tunnelkeeper ``runs`` rounds;
    the alternatives, which wait out the whole bounded wait, ``never_rounds`` rounds in which
    one replica of each is partitioned and another stopped at the same time."""
    sim = start_sim(work / "sim", {t: "builtin" for t in ("loop", "sd", "tk")})
    sups: list[Supervised] = []
    try:
        sups.append(start_restart_loop(work, sim, "loop", replicas))
        argv = {
            f"cf{i}": cloudflared_argv(sim, "sd", p) for i, p in enumerate(free_ports(replicas))
        }
        sups.append(start_supervisord(work / "supervisord", argv, "sd"))
        tk = start_tunnelkeeper(work / "tk", sim, "tk", replicas)
        sups.append(tk)
        samples: dict[tuple[str, str], list[Sample]] = {}
        rounds = [[(s, "exit") for s in sups]] * runs
        rounds += [[(tk, "partition")]] * runs + [[(tk, "sigstop")]] * runs
        rounds += [[(s, f) for s in sups[:2] for f in ("partition", "sigstop")]] * never_rounds
        for plan in rounds:
            for key, sample in fault_round(sim, plan, never_wait).items():
                samples.setdefault(key, []).append(sample)
        out: dict[str, Any] = {fault: {} for fault in FAULTS}
        for (name, fault), got in samples.items():
            out[fault][name] = {
                "reacts": figures([a for a, _ in got]),
                "recovers": figures([b for _, b in got]),
            }
        out["settings"] = {
            "replicas_per_supervisor": replicas,
            "never_wait_s": never_wait,
            "tunnelkeeper": "probe 1 s, unresponsive_after 3 s, unhealthy_after_seconds 3",
            "restart-loop": "Restart=on-failure RestartSec=5s",
            "supervisord": "autorestart=true startsecs=1",
        }
        return out
    finally:
        for s in sups:
            s.stop()
        sim.stop()


def table(res: dict[str, Any]) -> list[str]:
    lines = [
        f"{'fault':10} {'supervisor':13} {'reacts med':>10} {'p99':>7} {'recovers med':>13} "
        f"{'p99':>7} {'runs':>5}"
    ]
    for fault in FAULTS:
        for name, f in res[fault].items():
            r, c = f["reacts"], f["recovers"]
            lines.append(
                f"{fault:10} {name:13} {cell(r):>10} {cell(r, 'p99_s'):>7} {cell(c):>13} "
                f"{cell(c, 'p99_s'):>7} {r['runs']:5}"
            )
    lines.append(f"(never = no reaction within {res['settings']['never_wait_s']:g} s; seconds)")
    return lines


def main(argv: list[str] | None = None, emit: Callable[[str], None] = print) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--never-rounds", type=int, default=3)
    ap.add_argument("--never-wait", type=float, default=30.0)
    args = ap.parse_args(argv)
    refuse_strays()  # after the arguments: --help needs no clean machine
    with tempfile.TemporaryDirectory(prefix="tk-bench-alt-") as tmp:
        res = run_matrix(Path(tmp), args.runs, args.never_rounds, args.never_wait)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "alternatives.json").write_text(json.dumps(res, indent=2))
    for line in table(res):
        emit(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
