"""A live `tunnelkeeper run`: its /metrics passes `promtool check metrics`, and a real Prometheus
scraping it evaluates the shipped rules (with `for:` shortened) the way on-call would see them."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Daemon, Sim, daemon_config, start_daemon, start_sim, stop_process
from tests.monitoring.conftest import RULES, promtool
from tests.waiting import free_port, wait_until

TUNNEL = "portal"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    sim = start_sim(tmp_path / "sim", {TUNNEL: "builtin"})
    yield sim
    sim.stop()


@pytest.fixture
def daemon(tmp_path: Path, sim: Sim) -> Iterator[Daemon]:
    (tmp_path / "host").mkdir()
    api_token = tmp_path / "cf-api.token"
    api_token.write_text(sim.info["api_token"])
    fleet = "\n".join(
        [
            "[fleet]",
            f'api_url = "{sim.api}"',
            f'account_id = "{sim.info["account_id"]}"',
            f'api_token_file = "{api_token}"',
            "poll_seconds = 5",
        ]
    )
    config = daemon_config(
        tmp_path / "host",
        sim,
        tunnels={TUNNEL: {"id": f'"{sim.info["tunnels"][TUNNEL]}"', "expected_connectors": 2}},
        extra=fleet,
    )
    daemon = start_daemon(config)
    try:
        daemon.wait_ready(TUNNEL, 2)
        yield daemon
    finally:
        daemon.stop()


def test_live_metrics_pass_promtool(daemon: Daemon) -> None:
    exposition = daemon.metrics()
    for name in (
        "tunnelkeeper_replica_up",
        "tunnelkeeper_replica_ready_connections",
        "tunnelkeeper_tunnel_ready_replicas",
        "tunnelkeeper_tunnel_desired_replicas",
    ):
        assert f"\n{name}{{" in exposition, name
    result = promtool("check", "metrics", stdin=exposition.encode())
    assert (result.returncode, result.stderr.decode()) == (0, "")


def _start_prometheus(workdir: Path, daemon: Daemon) -> tuple[subprocess.Popen[bytes], str]:
    # the shipped rules, with every `for:` shortened so a test can see them fire
    rules = re.sub(r"for: \S+", "for: 1s", RULES.read_text())
    (workdir / "rules.yml").write_text(rules)
    target = daemon.url.removeprefix("http://")
    (workdir / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [rules.yml]\n"
        "scrape_configs:\n"
        "  - job_name: tunnelkeeper\n"
        f"    static_configs: [{{targets: ['{target}'], labels: {{host: test-host}}}}]\n"
    )
    port = free_port()
    with open(workdir / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return proc, f"http://127.0.0.1:{port}"


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


def _firing(url: str) -> dict[str, list[dict[str, str]]]:
    r = httpx.get(f"{url}/api/v1/alerts", timeout=5)
    r.raise_for_status()
    out: dict[str, list[dict[str, str]]] = {}
    for alert in r.json()["data"]["alerts"]:
        if alert["state"] == "firing":
            out.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
    return out


def test_shipped_rules_on_a_live_prometheus(tmp_path: Path, daemon: Daemon) -> None:
    proc, url = _start_prometheus(tmp_path, daemon)
    try:
        # discovery is throttled to every 5 s: wait for the recording rules to see the daemon
        ready = wait_until(
            lambda: _query(url, "tunnel:tunnelkeeper_ready_replicas:sum"),
            timeout=30,
            what="Prometheus to scrape the daemon and record",
        )
        assert [(s["metric"]["tunnel"], s["value"][1]) for s in ready] == [(TUNNEL, "2")]
        desired = _query(url, "tunnel:tunnelkeeper_desired_replicas:sum_max1h")
        assert [s["value"][1] for s in desired] == ["2"]
        assert _firing(url) == {}  # a healthy host raises nothing

        daemon.stop()  # the host's tunnelkeeper (and with it its replicas) is gone

        def down() -> dict[str, list[dict[str, str]]]:
            firing = _firing(url)
            wanted = {"TunnelkeeperDown", "TunnelNoReadyReplicas"}
            return firing if set(firing) >= wanted else {}

        firing = wait_until(down, timeout=30, what="TunnelkeeperDown to fire")
        (host_down,) = firing["TunnelkeeperDown"]
        assert (host_down["host"], host_down["severity"]) == ("test-host", "critical")
        (no_ready,) = firing["TunnelNoReadyReplicas"]
        assert no_ready == {
            "alertname": "TunnelNoReadyReplicas",
            "severity": "critical",
            "tunnel": TUNNEL,
        }
    finally:
        stop_process(proc)
