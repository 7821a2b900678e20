"""Fixtures for alert tests: scripted HTTP receivers, a whsec_ secret, a real Alertmanager."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.alerts.receiver import Receiver
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
