"""``tunnelkeeper test-alert``: a test alert and its resolve through every sink."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from standardwebhooks import Webhook

from tests.alerts.conftest import deliveries
from tests.alerts.receiver import Receiver, Reply
from tests.waiting import free_port
from tunnelkeeper.alerts import send_test_alerts
from tunnelkeeper.config.model import (
    AlertsConfig,
    CloudflaredConfig,
    Config,
    DaemonConfig,
    SinkConfig,
)
from tunnelkeeper.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]


async def test_send_test_alerts_reports_each_sink(
    tmp_path: Path,
    receivers: Callable[..., Receiver],
    metrics: Metrics,
    whsec: tuple[str, Path],
) -> None:
    secret, secret_file = whsec
    good, bad = receivers(), receivers()
    bad.default = Reply(400, b"invalid_payload")
    sinks = (
        SinkConfig(kind="webhook", name="hook", url=good.url, signing_secret_file=secret_file),
        SinkConfig(kind="slack", name="chat", url=bad.url, min_severity="critical"),
        SinkConfig(kind="alertmanager", name="am", url=f"http://127.0.0.1:{free_port()}"),
    )
    config = Config(
        path=tmp_path / "config.toml",
        daemon=DaemonConfig(host="origin-01"),
        cloudflared=CloudflaredConfig(),
        tunnels=(),
        alerts=AlertsConfig(sinks=sinks),
    )
    results = {r.sink: r for r in await send_test_alerts(config, metrics)}
    assert results["hook"].is_delivered
    assert results["chat"].error == "firing: HTTP 400: invalid_payload"  # min_severity ignored
    am_error = results["am"].error
    assert am_error is not None and am_error.startswith("firing: ConnectError")
    fired, resolved = (Webhook(secret).verify(r.body, r.headers) for r in good.received())
    assert fired["status"] == "firing" and resolved["status"] == "resolved"
    assert fired["commonLabels"] == {
        "alertname": "TunnelkeeperTest",
        "host": "origin-01",
        "severity": "info",
    }
    assert deliveries(metrics, "hook", "delivered") == 2
    assert deliveries(metrics, "chat", "failed") == 1


def test_test_alert_command_exit_codes(
    tmp_path: Path, receivers: Callable[..., Receiver], whsec: tuple[str, Path]
) -> None:
    _, secret_file = whsec
    rx = receivers()
    config = tmp_path / "config.toml"
    base = (
        '[daemon]\nhost = "origin-01"\n\n'
        '[[tunnel]]\nname = "portal"\ntoken = { source = "file", path = "/nonexistent" }\n\n'
        f'[[alerts.sink]]\nkind = "webhook"\nurl = "{rx.url}/hook"\n'
        f'signing_secret_file = "{secret_file}"\n'
    )
    config.write_text(base)
    ok = _run(config)
    assert ok.returncode == 0, ok.stderr
    assert "webhook" in ok.stdout and "delivered" in ok.stdout
    assert len(rx.received("/hook")) == 2

    down = f"http://127.0.0.1:{free_port()}/x"
    config.write_text(
        base + f'\n[[alerts.sink]]\nkind = "webhook"\nname = "down"\nurl = "{down}"\n'
    )
    failed = _run(config)
    assert failed.returncode == 1
    assert "FAILED" in failed.stdout and "Traceback" not in failed.stderr
    assert down not in failed.stdout + failed.stderr

    config.write_text("[alerts]\nfor_seconds = 'soon'\n")
    broken = _run(config)
    assert broken.returncode == 1
    assert "for_seconds" in broken.stderr and "Traceback" not in broken.stderr


def _run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "test-alert", "-c", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
