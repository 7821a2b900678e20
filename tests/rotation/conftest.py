"""Helpers for the rotation system tests; the simulator, `tunnelkeeper run`, OpenBao and moto
come from tests/servers.py (no cloudflared-sim replica may outlive its test)."""

from __future__ import annotations

import base64
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Daemon, Load, Sim, daemon_config
from tests.servers import AWS_ENV, AppRole, Bao, make_approle, secrets_manager  # noqa: F401
from tunnelkeeper.tunneltoken import TunnelToken

LOAD_RATE = 120.0


# --- the simulator and its API ------------------------------------------------------------------


def api_call(sim: Sim, method: str, path: str, **kw: Any) -> Any:
    r = httpx.request(
        method,
        f"{sim.api}/accounts/{sim.info['account_id']}{path}",
        headers={"Authorization": f"Bearer {sim.info['api_token']}"},
        timeout=10,
        **kw,
    )
    r.raise_for_status()
    body = r.json()
    assert body["success"] is True, body
    return body["result"]


def refresh_via_api(sim: Sim, tunnel: str) -> str:
    """What an operator does by hand: PATCH a new secret, GET the new token."""
    tid = sim.info["tunnels"][tunnel]
    secret = base64.b64encode(os.urandom(32)).decode()
    api_call(sim, "PATCH", f"/cfd_tunnel/{tid}", json={"tunnel_secret": secret})
    token: str = api_call(sim, "GET", f"/cfd_tunnel/{tid}/token")
    return token


def api_token(sim: Sim, tunnel: str) -> str:
    result: str = api_call(sim, "GET", f"/cfd_tunnel/{sim.info['tunnels'][tunnel]}/token")
    return result


def wrong_secret_token(sim: Sim, tunnel: str) -> str:
    """Well formed, for the right tunnel and account, with a random secret."""
    return TunnelToken.build(
        sim.info["account_id"], sim.info["tunnels"][tunnel], os.urandom(32)
    ).reveal()


def fingerprint(token: str) -> str:
    return TunnelToken.parse(token).fingerprint


def write_atomically(path: Path, text: str) -> None:
    """As Vault Agent or consul-template do: temp file in the same directory, then rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    os.replace(tmp, path)


# --- the daemon ---------------------------------------------------------------------------------


def tuned_config(
    tmp_path: Path,
    sim: Sim,
    token: str,
    *,
    ready_timeout_seconds: float = 8,
    extra: str = "",
    **tunnel: Any,
) -> Path:
    """A config for one tunnel "portal" whose token source is the TOML inline table ``token``."""
    cfg = daemon_config(tmp_path, sim, tunnels={"portal": {"token": token, **tunnel}}, extra=extra)
    text = cfg.read_text().replace(
        "ready_timeout_seconds = 15", f"ready_timeout_seconds = {ready_timeout_seconds}"
    )
    cfg.write_text(text)
    return cfg


def metric(d: Daemon, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in d.metrics().splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rolled_to(d: Daemon, sim: Sim, fp: str, replicas: int = 2) -> list[dict[str, Any]] | None:
    """Every replica is a ready primary on ``fp``, and the sim lists exactly their connectors."""
    reps = d.tunnel("portal")["replicas"]
    if len(reps) != replicas or any(r["role"] != "primary" for r in reps):
        return None
    if any(r["token_fingerprint"] != fp or r["ready_connections"] < 1 for r in reps):
        return None
    if sim.live_connector_ids("portal") != {r["connector_id"] for r in reps}:
        return None
    return reps


def spawns(d: Daemon) -> int:
    return len(re.findall(r'"event": "replica_spawned"', d.output()))


@dataclass
class Rate:
    requests: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class TimedLoad(Load):
    """tests.harness.Load that also measures its achieved request rate."""

    started_at: float = 0.0
    stopped_at: float = 0.0

    def __enter__(self) -> TimedLoad:
        self.started_at = time.monotonic()
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.stopped_at = time.monotonic()

    @property
    def rate(self) -> Rate:
        return Rate(self.total, (self.stopped_at or time.monotonic()) - self.started_at)


def report(request: pytest.FixtureRequest, load: TimedLoad) -> None:
    """Attach the achieved load to the test report (shown with -rA) and to a results file."""
    rate = load.rate
    line = (
        f"{request.node.name}: {rate.requests} requests in {rate.seconds:.1f}s = "
        f"{rate.per_second:.0f}/s, failed {load.failed}"
    )
    request.node.user_properties.append(("load", line))
    print(line)  # shown by `pytest -rA`
    out = os.environ.get("TK_ROTATION_LOAD_REPORT")
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
