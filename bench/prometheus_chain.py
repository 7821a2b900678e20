"""The Prometheus + Alertmanager comparator: what a user without tunnelkeeper runs to be paged.

Debian ``prometheus`` and ``prometheus-alertmanager`` scrape cloudflared-sim's own /metrics
directly, at each setting in :data:`CHAINS`, all scraping the same replicas so one fault is seen
by every chain. Rules: ``up == 0`` (exit; the replica stays down),
``cloudflared_tunnel_ha_connections == 0`` (partition; expected never to fire, the gauge counts
connection attempts) and ``tunnelkeeper_replica_ready_connections == 0`` (partition of replicas a
tunnelkeeper supervises, scraped from its /metrics). Alertmanager groups by every label
(``group_by: ['...']``), so each replica is its own page. Faults are staggered over one scrape
interval so they land at every phase of the scrape/evaluation cycle; "never" means no page
within scrape + eval + for + group_wait + 15 s. Used by bench.detection and bench.run_all.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.alternatives import (
    alerts_toml,
    cloudflared_argv,
    connector_id,
    figures,
    free_ports,
    tk_config,
    webhook_secret_file,
)
from tests.alerts.receiver import Receiver
from tests.harness import Daemon, Sim, start_daemon, start_sim, stop_process
from tests.waiting import free_port, wait_until


def first_page(
    rcv: Receiver, path: str, after: float, match: Callable[[dict[str, str]], bool]
) -> float | None:
    """Arrival time of the first firing alert on ``path`` after ``after`` whose labels match."""
    for r in rcv.received(path):
        if r.at < after:
            continue
        try:
            alerts = r.json()["alerts"]
        except (ValueError, KeyError, TypeError):
            continue
        if any(a.get("status") == "firing" and match(a.get("labels", {})) for a in alerts):
            return r.at
    return None


@dataclass(frozen=True)
class Chain:
    name: str
    scrape_s: float
    eval_s: float
    for_s: float
    group_wait_s: float
    explicit: bool = True  # False: write no interval/group_wait at all, so the defaults apply

    @property
    def worst_s(self) -> float:
        return self.scrape_s + self.eval_s + self.for_s + self.group_wait_s

    def settings(self) -> dict[str, Any]:
        return {
            "scrape_s": self.scrape_s,
            "eval_s": self.eval_s,
            "for_s": self.for_s,
            "group_wait_s": self.group_wait_s,
        }

    def computed(self) -> dict[str, Any]:
        """Beyond-for latency from the formula: U(0, scrape) + U(0, eval) + group_wait."""
        n = 200
        sums = sorted(
            (i + 0.5) / n * self.scrape_s + (j + 0.5) / n * self.eval_s + self.group_wait_s
            for i in range(n)
            for j in range(n)
        )
        exit_f = {
            "runs": 0,
            "never": 0,
            "median_s": round(statistics.median(sums), 1),
            "p99_s": round(sums[int(0.99 * len(sums))], 1),
            "max_s": self.scrape_s + self.eval_s + self.group_wait_s,
        }
        return {
            "settings": self.settings(),
            "computed": True,
            "exit": exit_f,
            "partition_ha_connections": {"runs": 0, "never": 0, "is_never": True},
            "partition_tk_metric": dict(exit_f),
        }


CHAINS = (
    Chain("fast", 1, 1, 5, 1),
    Chain("tuned", 15, 15, 30, 10),
    Chain("default", 60, 60, 60, 30, explicit=False),
)


def write_chain_configs(
    work: Path, c: Chain, am_port: int, hook: str, cf: list[str], tk: list[str]
) -> None:
    rules = [
        {"alert": name, "expr": expr, "for": f"{c.for_s:g}s"}
        for name, expr in (
            ("CloudflaredDown", 'up{job="cloudflared"} == 0'),
            ("CloudflaredNoConnections", "cloudflared_tunnel_ha_connections == 0"),
            ("TunnelkeeperReplicaNoConnections", "tunnelkeeper_replica_ready_connections == 0"),
        )
    ]
    glob = {"scrape_interval": f"{c.scrape_s:g}s", "evaluation_interval": f"{c.eval_s:g}s"}
    prom = {
        "global": glob if c.explicit else {},
        "rule_files": ["rules.yml"],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
        },
        "scrape_configs": [
            {"job_name": "cloudflared", "static_configs": [{"targets": cf}]},
            {"job_name": "tunnelkeeper", "static_configs": [{"targets": tk}]},
        ],
    }
    route: dict[str, Any] = {"receiver": "hook", "group_by": ["..."]}  # one page per alert
    if c.explicit:
        route["group_wait"] = f"{c.group_wait_s:g}s"
    am = {
        "route": route,
        "receivers": [{"name": "hook", "webhook_configs": [{"url": hook, "send_resolved": False}]}],
    }
    # JSON is YAML
    (work / "rules.yml").write_text(json.dumps({"groups": [{"name": "bench", "rules": rules}]}))
    (work / "prometheus.yml").write_text(json.dumps(prom))
    (work / "alertmanager.yml").write_text(json.dumps(am))


def start_chain(
    work: Path, c: Chain, hook: str, cf: list[str], tk: list[str]
) -> tuple[str, list[subprocess.Popen[bytes]]]:
    work.mkdir(parents=True)
    am_port, prom_port = free_port(), free_port()
    write_chain_configs(work, c, am_port, hook, cf, tk)
    procs = []
    for argv in (
        [
            "prometheus-alertmanager",
            f"--config.file={work / 'alertmanager.yml'}",
            f"--storage.path={work / 'am'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ],
        [
            "prometheus",
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
    ):
        with open(work / f"{Path(argv[0]).name}.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            )
    return f"http://127.0.0.1:{prom_port}", procs


def chain_ready(url: str, targets: int) -> bool:
    t = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    am = httpx.get(f"{url}/api/v1/alertmanagers", timeout=5).json()["data"]
    return (
        len(t) == targets
        and all(x["health"] == "up" for x in t)
        and bool(am["activeAlertmanagers"])
    )


def start_bare(sim: Sim, n: int) -> list[tuple[subprocess.Popen[bytes], int]]:
    """cloudflared-sim replicas as a user runs them (fixed metrics ports), started one by one."""
    out = []
    for port in free_ports(n):
        proc = subprocess.Popen(
            cloudflared_argv(sim, "bare", port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        out.append((proc, port))
        wait_until(
            lambda: bool(  # called right here: binding the loop variable late is fine
                connector_id(port)
                and httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200
            ),
            timeout=30,
        )
    return out


def run_chains(
    work: Path, chains: list[Chain], n_exit: int, stop: threading.Event, tk_for_seconds: float
) -> dict[str, Any]:
    """Kill ``n_exit`` replicas, partition up to 5 more and the tunnelkeeper-run ones; collect
    every chain's pages (and tunnelkeeper's own, for the same partitions)."""
    n_part, n_tk = min(5, n_exit), 2 if n_exit < 10 else 4
    sim = start_sim(work / "sim", {"bare": "builtin", "watched": "builtin"})
    rcv = Receiver().start()
    bare: list[tuple[subprocess.Popen[bytes], int]] = []
    procs: list[subprocess.Popen[bytes]] = []
    d: Daemon | None = None
    try:
        bare = start_bare(sim, n_exit + n_part)
        cfg = tk_config(
            work / "tk",
            sim,
            {"watched": {"replicas": n_tk, "unhealthy_after_seconds": 600}},
            # per-replica pages, as the chains' rules page: all of one tunnel's replicas are
            # partitioned here, which one-incident-one-page would fold into TunnelDown
            extra=alerts_toml(f"{rcv.url}/tk", webhook_secret_file(work), tk_for_seconds).replace(
                "[alerts]\n", "[alerts]\ninhibit = false\ngroup_by_tunnel = false\n"
            ),
        )
        d = start_daemon(cfg)
        d.wait_ready("watched", n_tk, timeout=60)
        cf = [f"127.0.0.1:{port}" for _, port in bare]
        urls = {}
        for c in chains:
            urls[c.name], started = start_chain(
                work / c.name, c, f"{rcv.url}/{c.name}", cf, [d.url[7:]]
            )
            procs += started
        for c in chains:
            wait_until(
                lambda: chain_ready(urls[c.name], len(cf) + 1),
                timeout=2 * c.scrape_s + 40,
                interval=0.5,
                what=f"{c.name} Prometheus scraping every target",
            )
        faults = [("exit", i) for i in range(n_exit)] + [
            ("bare", n_exit + i) for i in range(n_part)
        ]
        faults += [("tk", r["slot"]) for r in d.primaries("watched")]
        random.shuffle(faults)
        spread = max(c.scrape_s for c in chains)
        begin, t0s = time.monotonic(), {}
        for i, fault in enumerate(faults):  # each at its own phase of the scrape/eval cycle
            at = begin + (i + random.random()) * spread / len(faults)
            stop.wait(max(0.0, at - time.monotonic()))
            kind, ref = fault
            t0s[fault] = time.monotonic()
            if kind == "exit":
                bare[ref][0].kill()
            elif kind == "bare":
                sim.fault("partition", connector_id=connector_id(bare[ref][1]))
            else:
                slot = next(r for r in d.primaries("watched") if r["slot"] == ref)
                sim.fault("partition", connector_id=slot["connector_id"])
        stop.wait(max(c.worst_s for c in chains) + 15)
        return collect(rcv, chains, bare, t0s, tk_for_seconds)
    finally:
        for p in procs:
            stop_process(p)
        if d is not None:
            d.stop()
        for p, _ in bare:
            stop_process(p)
        rcv.stop()
        sim.stop()


def collect(
    rcv: Receiver,
    chains: list[Chain],
    bare: list[tuple[subprocess.Popen[bytes], int]],
    t0s: dict[tuple[str, int], float],
    tk_for_seconds: float,
) -> dict[str, Any]:
    def latency(
        path: str, alertname: str, key: str, value: str, t0: float, for_s: float
    ) -> float | None:
        at = first_page(
            rcv, path, t0, lambda lab: lab.get("alertname") == alertname and lab.get(key) == value
        )
        return None if at is None else at - t0 - for_s

    out: dict[str, Any] = {}
    for c in chains:
        got: dict[str, list[float | None]] = {
            "exit": [],
            "partition_ha_connections": [],
            "partition_tk_metric": [],
        }
        for (kind, ref), t0 in t0s.items():
            if kind == "tk":
                got["partition_tk_metric"].append(
                    latency(
                        f"/{c.name}",
                        "TunnelkeeperReplicaNoConnections",
                        "slot",
                        str(ref),
                        t0,
                        c.for_s,
                    )
                )
            else:
                inst = f"127.0.0.1:{bare[ref][1]}"
                key, name = (
                    ("exit", "CloudflaredDown")
                    if kind == "exit"
                    else ("partition_ha_connections", "CloudflaredNoConnections")
                )
                got[key].append(latency(f"/{c.name}", name, "instance", inst, t0, c.for_s))
        out[c.name] = {
            "settings": c.settings(),
            "never_wait_s": c.worst_s + 15,
            **{k: figures(v) for k, v in got.items()},
        }
    same = [
        latency("/tk", "ReplicaNoEdgeConnections", "slot", str(ref), t0, tk_for_seconds)
        for (kind, ref), t0 in t0s.items()
        if kind == "tk"
    ]
    return {"chains": out, "tunnelkeeper_same_run": {"partition": figures(same)}}


class ChainsInBackground:
    """The Prometheus chains, mostly waiting, in a thread beside the other measurements."""

    def __init__(
        self, work: Path, n_exit: int, measure_defaults: bool, tk_for_seconds: float
    ) -> None:
        self.chains = [c for c in CHAINS if measure_defaults or c.name != "default"]
        self.measured_defaults = measure_defaults
        self.box: dict[str, Any] = {}
        self.stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(work, n_exit, tk_for_seconds),
            name="prometheus-chains",
            daemon=True,
        )

    def _run(self, work: Path, n_exit: int, tk_for_seconds: float) -> None:
        try:
            self.box.update(run_chains(work, self.chains, n_exit, self.stop, tk_for_seconds))
        except Exception as exc:  # reported in the results, never lost
            self.box["error"] = repr(exc)

    def start(self) -> ChainsInBackground:
        self._thread.start()
        return self

    def result(self, *, abort: bool = False) -> dict[str, Any]:
        """Wait for the chains (or, with ``abort``, stop them now) and return what they saw."""
        if abort:
            self.stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.box
