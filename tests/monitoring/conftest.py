"""Helpers for the monitoring assets: where they live, the metric names tunnelkeeper exports,
and PromQL name extraction."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from tunnelkeeper.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "monitoring" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yml"
THRESHOLDS = PROMETHEUS_DIR / "thresholds.example.yml"
SCRAPE_EXAMPLE = PROMETHEUS_DIR / "prometheus.example.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "tunnelkeeper.json"

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_OURS = re.compile(r"\btunnelkeeper_[a-z0-9_]+\b")
_RECORDED = re.compile(r"\b[a-z_][a-z0-9_]*:[a-z0-9_:]*[a-z0-9_]\b")


def exported_names() -> set[str]:
    """Every sample name tunnelkeeper's registry can expose (counters with _total, etc.)."""
    return Metrics().registry.sample_names()


def referenced_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads: ours (tunnelkeeper_*) and recorded (a:b:c)."""
    bare = _STRINGS.sub('""', expr)
    recorded = set(_RECORDED.findall(bare))
    return recorded | set(_OURS.findall(_RECORDED.sub(" ", bare)))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules(path: Path = RULES) -> list[dict[str, Any]]:
    return [rule for group in load_yaml(path)["groups"] for rule in group["rules"]]


def promtool(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> Any:
    return subprocess.run(
        ["promtool", *args], input=stdin, capture_output=True, timeout=60, cwd=cwd, check=False
    )
