"""Fixtures for the rotation system tests: the simulator, `tunnelkeeper run`, OpenBao, moto.

Every process is started here and stopped by its pid in a finalizer; no cloudflared-sim replica
may outlive the test.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.harness import VENV_BIN, Daemon, Load, Sim, daemon_config, start_daemon, start_sim
from tests.origin import Origin
from tests.waiting import free_port, wait_until
from tunnelkeeper.tunneltoken import TunnelToken

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}
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


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as o:
        yield o


@pytest.fixture
def make_sim(tmp_path: Path, origin: Origin) -> Iterator[Callable[..., Sim]]:
    started: list[Sim] = []

    def start(*tunnels: str) -> Sim:
        s = start_sim(tmp_path / "sim", {t: origin.url for t in (tunnels or ("portal",))})
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def sim(make_sim: Callable[..., Sim]) -> Sim:
    return make_sim("portal")


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


@pytest.fixture
def run_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(config: Path, env: dict[str, str] | None = None) -> Daemon:
        d = start_daemon(config, env=env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(str(tmp_path) in part for part in (p.info["cmdline"] or []))
        and "cloudflared-sim" in " ".join(p.info["cmdline"] or [])
    ]
    for p in leftovers:
        p.kill()
    assert not leftovers, f"replicas left behind: {[p.pid for p in leftovers]}"


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


# --- OpenBao --------------------------------------------------------------------------------------


@dataclass
class Bao:
    addr: str
    root_token: str

    def api(self, method: str, path: str, body: Any = None) -> Any:
        with httpx.Client(base_url=self.addr, trust_env=False, timeout=10) as client:
            resp = client.request(
                method, f"/v1/{path}", json=body, headers={"X-Vault-Token": self.root_token}
            )
        assert resp.status_code < 300, (method, path, resp.status_code, resp.text[:200])
        return resp.json() if resp.content else None

    def put(self, path: str, data: dict[str, Any]) -> int:
        return int(self.api("POST", f"secret/data/{path}", {"data": data})["data"]["version"])

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        data = self.api("GET", f"secret/data/{path}")["data"]
        return int(data["metadata"]["version"]), data["data"]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, trust_env=False, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    home = tmp_path_factory.mktemp("bao")
    port = free_port()
    root = secrets.token_hex(16)
    addr = f"http://127.0.0.1:{port}"
    with open(home / "server.log", "wb") as log:  # the dev log prints the root token
        proc = subprocess.Popen(
            [
                str(VENV_BIN / "bao"),
                "server",
                "-dev",
                f"-dev-listen-address=127.0.0.1:{port}",
                f"-dev-root-token-id={root}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=home,
            env={"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
    try:
        wait_until(lambda: proc.poll() is not None or _answers(f"{addr}/v1/sys/health"), timeout=30)
        assert proc.poll() is None, (home / "server.log").read_text()[-2000:]
        yield Bao(addr, root)
    finally:
        _stop(proc)


@dataclass
class AppRole:
    role_id_file: Path
    secret_id_file: Path


def make_approle(bao: Bao, directory: Path, name: str, capabilities: list[str]) -> AppRole:
    """An AppRole whose policy grants ``capabilities`` on secret/tk/* (data and metadata)."""
    caps = ", ".join(f'"{c}"' for c in capabilities)
    policy = f'path "secret/data/tk/*" {{ capabilities = [{caps}] }}\n'
    policy += 'path "secret/metadata/tk/*" { capabilities = ["read"] }\n'
    bao.api("PUT", f"sys/policies/acl/{name}", {"policy": policy})
    if "approle/" not in bao.api("GET", "sys/auth")["data"]:
        bao.api("POST", "sys/auth/approle", {"type": "approle"})
    bao.api(
        "POST",
        f"auth/approle/role/{name}",
        {"token_policies": [name], "token_ttl": "1h", "secret_id_ttl": "1h"},
    )
    role_id = bao.api("GET", f"auth/approle/role/{name}/role-id")["data"]["role_id"]
    secret_id = bao.api("POST", f"auth/approle/role/{name}/secret-id", {})["data"]["secret_id"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.role_id").write_text(role_id + "\n")
    (directory / f"{name}.secret_id").write_text(secret_id + "\n")
    return AppRole(directory / f"{name}.role_id", directory / f"{name}.secret_id")


# --- moto -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("moto")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), **AWS_ENV}
    with open(home / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=home,
            env=env,
        )
    try:
        wait_until(lambda: proc.poll() is not None or _answers(f"{url}/moto-api/"), timeout=45)
        assert proc.poll() is None, (home / "server.log").read_text()[-2000:]
        yield url
    finally:
        _stop(proc)


def secrets_manager(url: str) -> Any:
    import boto3

    return boto3.client(
        "secretsmanager",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
