from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.alerts.conftest import alertmanager, receivers  # noqa: F401 - shared fixtures
from tests.harness import Daemon, Sim, daemon_config, start_daemon, start_sim
from tests.host.conftest import release_server  # noqa: F401 - shared fixture
from tests.origin import Origin


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as o:
        yield o


@pytest.fixture
def sim(tmp_path: Path, origin: Origin) -> Iterator[Sim]:
    s = start_sim(tmp_path / "sim", {"portal": origin.url})
    yield s
    s.stop()


@pytest.fixture
def run_daemon(tmp_path: Path, sim: Sim) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(tunnels: dict[str, dict[str, Any]] | None = None, **kw: Any) -> Daemon:
        cfg = daemon_config(tmp_path, sim, tunnels=tunnels or {"portal": {}}, **kw)
        d = start_daemon(cfg)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
    # No cloudflared may outlive its daemon.
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(str(tmp_path) in part for part in (p.info["cmdline"] or []))
        and "cloudflared-sim" in " ".join(p.info["cmdline"] or [])
    ]
    for p in leftovers:
        p.kill()
    assert not leftovers, f"replicas left behind: {[p.pid for p in leftovers]}"


@pytest.fixture
def origin_url(origin: Origin) -> str:
    return origin.url
