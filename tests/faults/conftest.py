"""Fixtures for the fault matrix: the simulator, `tunnelkeeper run` with a tuned config, alert
receivers, restartable OpenBao and moto servers, a tiny tmpfs.

Every process and server is started here and stopped by the pid it was started with (SIGTERM,
wait, SIGKILL) in a finalizer, even when the test fails; no cloudflared-sim replica may outlive
its test. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.alerts.conftest import receivers  # noqa: F401 - shared fixture
from tests.alerts.receiver import Receiver
from tests.harness import Daemon, Sim, daemon_config
from tests.servers import Bao, Server, moto_server, openbao

# --- the simulator and the daemon ---------------------------------------------------------------


def fault_config(
    tmp_path: Path,
    sim: Sim,
    *,
    tunnels: dict[str, dict[str, Any]] | None = None,
    ready_timeout_seconds: float = 15,
    **kw: Any,
) -> Path:
    """tests.harness.daemon_config with a tunable ready timeout."""
    cfg = daemon_config(tmp_path, sim, tunnels=tunnels or {"portal": {}}, **kw)
    text = cfg.read_text().replace(
        "ready_timeout_seconds = 15", f"ready_timeout_seconds = {ready_timeout_seconds}"
    )
    cfg.write_text(text)
    return cfg


# --- reading what a user sees -------------------------------------------------------------------


def metric(d: Daemon, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in d.metrics().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def events(d: Daemon, event: str) -> int:
    """How many log lines the daemon wrote for ``event`` (JSON logs)."""
    return len(d.events(event))


# --- alert receivers ----------------------------------------------------------------------------


@pytest.fixture
def whsec(tmp_path: Path) -> tuple[str, Path]:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    path = tmp_path / "webhook.secret"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret, path


def webhook_sink(url: str, secret_file: Path, *, name: str, timeout_seconds: float = 10) -> str:
    return (
        f'[[alerts.sink]]\nkind = "webhook"\nname = "{name}"\nurl = "{url}"\n'
        f'signing_secret_file = "{secret_file}"\ntimeout_seconds = {timeout_seconds}\n'
    )


def alerts_toml(*sinks: str, for_seconds: float = 2, resolve_hold_seconds: float = 1) -> str:
    return (
        f"[alerts]\nfor_seconds = {for_seconds}\nresolve_hold_seconds = {resolve_hold_seconds}\n\n"
        + "\n".join(sinks)
    )


@dataclass(frozen=True)
class Page:
    webhook_id: str
    status: str  # the notification's: firing | resolved
    alerts: list[dict[str, Any]] = field(default_factory=list)


def pages(receiver: Receiver, path: str = "/hook") -> list[Page]:
    """Distinct notifications by webhook-id, in order of first arrival."""
    seen: dict[str, Page] = {}
    for r in receiver.received(path):
        if r.headers["webhook-id"] not in seen:
            body = r.json()
            seen[r.headers["webhook-id"]] = Page(
                r.headers["webhook-id"], body["status"], body["alerts"]
            )
    return list(seen.values())


def alerts_named(
    receiver: Receiver, name: str, status: str | None = None, path: str = "/hook"
) -> list[dict[str, Any]]:
    return [
        a
        for p in pages(receiver, path)
        for a in p.alerts
        if a["labels"]["alertname"] == name and (status is None or a["status"] == status)
    ]


# --- OpenBao and moto, restartable on the same port -----------------------------------------------


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[Bao]:
    home = tmp_path / "bao"
    home.mkdir()
    server = openbao(home)
    try:
        server.server.start()
        yield server
    finally:
        server.server.stop()


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[Server]:
    home = tmp_path / "moto"
    home.mkdir()
    server = moto_server(home)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --- a tiny filesystem ----------------------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only); unmounted afterwards, lazily if something still holds it."""
    where = tmp_path / "state"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.fail(f"mount -t tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        done = subprocess.run(["umount", str(where)], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
