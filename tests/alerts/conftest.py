"""Fixtures for alert tests: scripted HTTP receivers, a whsec_ secret, a real Alertmanager."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.alerts.receiver import Receiver
from tests.waiting import free_port, wait_until
from tunnelkeeper.alerts import Dispatcher, Outbox
from tunnelkeeper.config.model import SinkConfig
from tunnelkeeper.metrics import Metrics


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def make(port: int = 0) -> Receiver:
        receiver = Receiver(port).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def whsec(tmp_path: Path) -> tuple[str, Path]:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    path = tmp_path / "webhook.secret"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret, path


@pytest.fixture
async def dispatchers(tmp_path: Path, metrics: Metrics) -> AsyncIterator[Callable[..., Any]]:
    """make(sinks, **options) -> a started Dispatcher over a fresh outbox; closed afterwards."""
    made: list[tuple[Dispatcher, Outbox]] = []

    async def make(sinks: list[SinkConfig], **options: Any) -> Dispatcher:
        outbox = Outbox(tmp_path / f"outbox-{len(made)}.sqlite3")
        options.setdefault("backoff_base_seconds", 0.05)
        options.setdefault("backoff_cap_seconds", 0.5)
        dispatcher = Dispatcher(outbox, sinks, metrics, **options)
        made.append((dispatcher, outbox))
        await dispatcher.start()
        return dispatcher

    yield make
    for dispatcher, outbox in made:
        await dispatcher.aclose()
        outbox.close()


def deliveries(metrics: Metrics, sink: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "tunnelkeeper_alert_deliveries_total", {"sink": sink, "result": result}
    )
    return value or 0.0


@dataclass
class Alertmanager:
    url: str
    webhook: Receiver


DEFAULT_AM_CONFIG = (
    "route: {receiver: tk-webhook, group_by: [alertname], group_wait: 1s,"
    " group_interval: 1s, repeat_interval: 1h}\n"
    "receivers: [{name: tk-webhook, webhook_configs:"
    " [{url: 'WEBHOOK_URL', send_resolved: true}]}]\n"
)


@pytest.fixture
def make_alertmanager(
    tmp_path: Path, receivers: Callable[..., Receiver]
) -> Iterator[Callable[[str], Alertmanager]]:
    """A real Alertmanager on loopback with the given config, whose ``WEBHOOK_URL`` is replaced
    by a local receiver's ``/hook``."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.fail("prometheus-alertmanager is not installed (tests/run.sh installs it)")
    running: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(config_text: str) -> Alertmanager:
        webhook = receivers()
        home = tmp_path / f"am{len(running)}"
        storage = home / "data"
        storage.mkdir(parents=True)
        config = home / "alertmanager.yml"
        config.write_text(config_text.replace("WEBHOOK_URL", f"{webhook.url}/hook"))
        port = free_port()
        log = (home / "alertmanager.log").open("wb")
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={storage}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        running.append((proc, log))
        url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: (
                proc.poll() is None and httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            ),
            timeout=20,
            what="alertmanager ready",
        )
        return Alertmanager(url, webhook)

    yield start
    for proc, log in running:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def alertmanager(make_alertmanager: Callable[[str], Alertmanager]) -> Alertmanager:
    return make_alertmanager(DEFAULT_AM_CONFIG)
