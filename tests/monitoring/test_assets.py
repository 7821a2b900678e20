"""The shipped Prometheus rules, their unit tests, the scrape example and the Grafana dashboard."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.monitoring.conftest import (
    DASHBOARD,
    PROMETHEUS_DIR,
    RULES,
    RULES_TEST,
    SCRAPE_EXAMPLE,
    THRESHOLDS,
    exported_names,
    load_yaml,
    promtool,
    referenced_names,
    rules,
)

REQUIRED_ALERTS = {
    "TunnelkeeperDown",
    "TunnelReplicasBelowDesired",
    "TunnelNoReadyReplicas",
    "ReplicaNoEdgeConnections",
    "ReplicaCrashLooping",
    "TokenRotationFailed",
    "AlertOutboxBacklog",
    "FleetConnectorsLow",
}


def test_promtool_checks_the_rules() -> None:
    for path in (RULES, THRESHOLDS):
        result = promtool("check", "rules", str(path))
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
        assert b"SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULES_TEST.name, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"SUCCESS" in result.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The unit tests bind the rules: loosening a threshold breaks them."""
    text = RULES.read_text().replace("for: 30s", "for: 5m")
    (tmp_path / "rules.yml").write_text(text)
    shutil.copy(RULES_TEST, tmp_path / "rules_test.yml")
    result = promtool("test", "rules", "rules_test.yml", cwd=tmp_path)
    assert result.returncode == 1
    assert b"ReplicaNoEdgeConnections" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    assert set(alerts) >= REQUIRED_ALERTS
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(RULES_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(alerts) <= fired, set(alerts) - fired
    assert set(alerts) <= quiet, set(alerts) - quiet
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), name
        assert {"summary", "runbook"} <= set(rule["annotations"]), name


def test_fleet_alert_has_no_host_identity() -> None:
    """FleetConnectorsLow aggregates hosts away, like the daemon's own alert of that name."""
    (rule,) = [r for r in rules() if r.get("alert") == "FleetConnectorsLow"]
    assert "host" not in rule["labels"]
    recorded = {r["record"]: r["expr"] for r in rules() if "record" in r}
    assert "max by (tunnel)" in recorded["tunnel:tunnelkeeper_fleet_connectors:max"]


def test_rules_reference_only_exported_metrics() -> None:
    known = exported_names() | recorded_names()
    for rule in rules() + rules(THRESHOLDS):
        missing = referenced_names(rule["expr"]) - known
        assert not missing, (rule.get("alert") or rule.get("record"), missing)


def recorded_names() -> set[str]:
    return {r["record"] for r in rules() + rules(THRESHOLDS) if "record" in r}


def test_scrape_example_is_valid(tmp_path: Path) -> None:
    for name in (SCRAPE_EXAMPLE.name, RULES.name):
        shutil.copy(PROMETHEUS_DIR / name, tmp_path / name)
    result = promtool("check", "config", SCRAPE_EXAMPLE.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    config = load_yaml(SCRAPE_EXAMPLE)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "tunnelkeeper"]
    targets = job["static_configs"]
    assert len(targets) >= 3 and all("host" in t["labels"] for t in targets)


# --- Grafana -----------------------------------------------------------------------------------


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_dashboard_imports_with_a_datasource_input() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (ds_input,) = dashboard["__inputs"]
    assert ds_input["name"] == "DS_PROMETHEUS"
    assert (ds_input["type"], ds_input["pluginId"]) == ("datasource", "prometheus")
    assert dashboard["id"] is None and dashboard["uid"] and dashboard["title"]
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    wanted = {"prometheus": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}}
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == wanted["prometheus"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == wanted["prometheus"], panel["title"]
    for var in dashboard["templating"]["list"]:
        assert var["datasource"] == wanted["prometheus"], var["name"]


def test_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = exported_names() | recorded_names()
    used: set[str] = set()
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            names = referenced_names(target["expr"])
            assert names or "up{" in target["expr"], (panel["title"], target["expr"])
            assert names <= known, (panel["title"], names - known)
            used |= names
    for var in dashboard["templating"]["list"]:
        assert referenced_names(var["definition"]) <= known
    # the overview the issue asks for: replicas, connections, restarts, rotations, deliveries,
    # fleet connectors per colo
    for name in (
        "tunnelkeeper_tunnel_ready_replicas",
        "tunnelkeeper_replica_ready_connections",
        "tunnelkeeper_replica_restarts_total",
        "tunnelkeeper_token_rotations_total",
        "tunnelkeeper_alert_deliveries_total",
        "tunnelkeeper_alert_outbox_pending",
        "tunnelkeeper_fleet_connectors",
        "tunnelkeeper_fleet_colo_connections",
    ):
        assert name in used, name


ALERTMANAGER_EXAMPLE = (
    Path(__file__).resolve().parents[2] / "monitoring/alertmanager/alertmanager.example.yml"
)


def test_amtool_checks_the_alertmanager_example() -> None:
    amtool = shutil.which("amtool")
    assert amtool is not None, "amtool (prometheus-alertmanager) is not installed"
    result = subprocess.run(
        [amtool, "check-config", str(ALERTMANAGER_EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 inhibit rules" in result.stdout
