from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.alerts.conftest import receivers  # noqa: F401 - shared fixture
from tests.harness import Daemon, Sim, daemon_config, start_daemon
from tests.host.conftest import release_server  # noqa: F401 - shared fixture
from tests.origin import Origin
from tests.servers import assert_no_replicas_left


@pytest.fixture
def run_daemon(tmp_path: Path, sim: Sim) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(
        tunnels: dict[str, dict[str, Any]] | None = None,
        env: dict[str, str] | None = None,
        **kw: Any,
    ) -> Daemon:
        cfg = daemon_config(tmp_path, sim, tunnels=tunnels or {"portal": {}}, **kw)
        d = start_daemon(cfg, env=env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
    assert_no_replicas_left(tmp_path)  # no cloudflared may outlive its daemon


@pytest.fixture
def origin_url(origin: Origin) -> str:
    return origin.url
