"""The hub namespace's servers: `tunnelkeeper sim`, a real Alertmanager routing to a recording
webhook receiver, and a real Prometheus scraping every host's daemon with the shipped rules.

Servers run under ``ip netns exec HUB`` bound to the hub's bridge address; the receiver's socket
is opened from a thread inside the hub, on the hub's own loopback. Ports are fixed: each
namespace has its own port space.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx

from tests.alerts.receiver import Receiver
from tests.harness import TUNNELKEEPER, Sim, stop_process
from tests.monitoring.conftest import RULES
from tests.multihost.netns import HUB_IP, Topology
from tests.waiting import wait_until

ALERTMANAGER_PORT = 9093
PROMETHEUS_PORT = 9090
DAEMON_PORT = 9105
ALERTMANAGER_URL = f"http://{HUB_IP}:{ALERTMANAGER_PORT}"
PROMETHEUS_URL = f"http://{HUB_IP}:{PROMETHEUS_PORT}"
RULE_FOR = "1s"  # every `for:` of the shipped rules, shortened so a test sees them fire


def popen_in(topo: Topology, ns: str, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start argv inside namespace ns; `ip netns exec` execs, so the pid is argv's process."""
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            topo.exec_argv(ns, argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _binary(*names: str) -> str:
    for name in names:
        if found := shutil.which(name):
            return found
    raise RuntimeError(f"{names[0]} is not installed (tests/run.sh installs it)")


def start_sim(topo: Topology, workdir: Path, tunnel: str) -> Sim:
    """`tunnelkeeper sim --listen HUB_IP` with the builtin origin (also on HUB_IP)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / "sim-ready.json"
    argv = [TUNNELKEEPER, "sim", "--listen", HUB_IP, "--token-dir", str(workdir)]
    argv += ["--ready-file", str(ready), "--tunnel", f"{tunnel}=builtin"]
    proc = popen_in(topo, topo.hub, argv, workdir / "sim.log")
    try:
        wait_until(lambda: ready.exists() or proc.poll() is not None, timeout=30, what="sim")
        if proc.poll() is not None:
            raise RuntimeError(f"sim exited: {(workdir / 'sim.log').read_text()[-2000:]}")
        info = json.loads(ready.read_text())
    except BaseException:
        stop_process(proc)
        raise
    return Sim(proc, workdir, info)


def start_alertmanager(topo: Topology, workdir: Path, webhook: Receiver) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "alertmanager.yml"
    config.write_text(
        "route: {receiver: tk-webhook, group_by: [alertname], group_wait: 1s,"
        " group_interval: 1s, repeat_interval: 1h}\n"
        "receivers: [{name: tk-webhook, webhook_configs:"
        f" [{{url: '{webhook.url}/hook', send_resolved: true}}]}}]\n"
    )
    (workdir / "data").mkdir(exist_ok=True)
    argv = [
        _binary("prometheus-alertmanager", "alertmanager"),
        f"--config.file={config}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address={HUB_IP}:{ALERTMANAGER_PORT}",
        "--cluster.listen-address=",
    ]
    return popen_in(topo, topo.hub, argv, workdir / "alertmanager.log")


def start_prometheus(topo: Topology, workdir: Path) -> subprocess.Popen[bytes]:
    """Prometheus scraping job "tunnelkeeper" (one target per host, `host` label) with the
    shipped rules, their expressions kept and every `for:` shortened. It sends alerts nowhere:
    the test reads them from its API, and the daemons' own alerts stay the only pages."""
    workdir.mkdir(parents=True, exist_ok=True)
    rules, n = re.subn(r"(?m)^(\s+for:) \S+$", rf"\1 {RULE_FOR}", RULES.read_text())
    assert n > 0, "the shipped rules have no `for:` to shorten"
    (workdir / "rules.yml").write_text(rules)
    targets = ", ".join(
        f"{{targets: ['{topo.ip(h)}:{DAEMON_PORT}'], labels: {{host: {h}}}}}"
        for h in topo.host_names
    )
    (workdir / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [rules.yml]\n"
        "scrape_configs:\n"
        "  - job_name: tunnelkeeper\n"
        "    scrape_timeout: 1s\n"
        f"    static_configs: [{targets}]\n"
    )
    (workdir / "data").mkdir(exist_ok=True)
    argv = [
        _binary("prometheus"),
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={HUB_IP}:{PROMETHEUS_PORT}",
    ]
    return popen_in(topo, topo.hub, argv, workdir / "prometheus.log")


def wait_http_ready(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    """Call from inside the hub."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        return httpx.get(url, timeout=2).status_code == 200

    wait_until(ready, timeout=30, interval=0.1, what=f"{what} ready")


def prometheus_get(path: str, **params: str) -> Any:
    """GET a Prometheus API path; call from inside the hub."""
    r = httpx.get(PROMETHEUS_URL + path, params=params, timeout=5)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body["data"]


def alertmanager_alerts() -> list[dict[str, Any]]:
    """Alertmanager's active alerts; call from inside the hub."""
    r = httpx.get(ALERTMANAGER_URL + "/api/v2/alerts", params={"active": "true"}, timeout=5)
    r.raise_for_status()
    alerts: list[dict[str, Any]] = r.json()
    return alerts
