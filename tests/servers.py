"""The one place tests start real servers: OpenBao, moto, the simulator and the daemon.

Each server binds only 127.0.0.1 on a free port, is waited for with a deadline (never a sleep),
and is stopped by the pid it was started with, also when the test fails. OpenBao and moto are
restartable on the same port (``Server.stop()``/``start()``: the fault tests' outage). The
fixtures at the bottom are shared by the test packages' conftest files, which import them.
Alertmanager (a Debian package) is started here too (``make_alertmanager``: any config); the
multi-host rig's Prometheus and Alertmanager live in ``tests/multihost/hub.py`` (inside their
network namespace), with the binaries found by :func:`debian_binary`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.alerts.receiver import Receiver
from tests.harness import VENV_BIN, Daemon, Sim, start_daemon, start_sim, stop_process
from tests.origin import Origin
from tests.waiting import free_port, wait_until

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


def debian_binary(*names: str) -> str:
    """The first of ``names`` on PATH (Debian renames some upstream binaries)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"none of {names} installed: tests/run.sh installs them")


def _verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    return True if ca_file is None else ssl.create_default_context(cafile=str(ca_file))


def _answers(url: str, ca_file: Path | None = None) -> bool:
    verify = _verify(ca_file)
    try:
        return httpx.get(url, trust_env=False, timeout=2, verify=verify).status_code == 200
    except httpx.HTTPError:
        return False


class Server:
    """A server process that a test can stop (the fault) and start again on the same port."""

    def __init__(
        self,
        home: Path,
        argv: list[str],
        ready_url: str,
        env: dict[str, str],
        ca_file: Path | None = None,  # an https server's CA, once it has started
    ) -> None:
        self.home, self.argv, self.ready_url, self.env = home, argv, ready_url, env
        self.ca_file = ca_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """scheme://host:port, without the readiness path."""
        return "/".join(self.ready_url.split("/")[:3])

    def start(self) -> None:
        with open(self.home / "server.log", "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                env=self.env,
            )
        proc = self.proc
        wait_until(
            lambda: proc.poll() is not None or _answers(self.ready_url, self.ca_file),
            timeout=45,
            what="server",
        )
        assert proc.poll() is None, (self.home / "server.log").read_text()[-2000:]

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)


# --- OpenBao (Vault) ------------------------------------------------------------------------------


@dataclass
class Bao:
    server: Server
    addr: str
    root_token: str

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        headers = {"X-Vault-Token": token or self.root_token}
        verify = _verify(self.server.ca_file)
        with httpx.Client(base_url=self.addr, trust_env=False, timeout=10, verify=verify) as client:
            resp = client.request(method, f"/v1/{path}", json=body, headers=headers)
        assert resp.status_code < 300, (method, path, resp.status_code, resp.text[:200])
        return resp.json() if resp.content else None

    def put(self, path: str, data: dict[str, Any]) -> int:
        return int(self.api("POST", f"secret/data/{path}", {"data": data})["data"]["version"])

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        data = self.api("GET", f"secret/data/{path}")["data"]
        return int(data["metadata"]["version"]), data["data"]


def openbao(home: Path, *, tls: bool = False) -> Bao:
    """An OpenBao dev server (in memory: a restart starts empty, with the same root token);
    not started yet. Its log holds the root token, so it stays in ``home``. With ``tls`` it
    serves https with a CA it generates at start, ``server.ca_file``."""
    port = free_port()
    root = secrets.token_hex(16)
    addr = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    argv = [
        str(VENV_BIN / "bao"),
        "server",
        "-dev",
        f"-dev-listen-address=127.0.0.1:{port}",
        f"-dev-root-token-id={root}",
    ]
    ca_file = None
    if tls:
        (home / "tls").mkdir()
        argv += ["-dev-tls", f"-dev-tls-cert-dir={home / 'tls'}"]
        ca_file = home / "tls" / "vault-ca.pem"
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return Bao(Server(home, argv, f"{addr}/v1/sys/health", env, ca_file), addr, root)


@dataclass
class AppRole:
    role_id_file: Path
    secret_id_file: Path


def make_approle(
    bao: Bao, directory: Path, name: str, capabilities: list[str], *, prefix: str = "tk"
) -> AppRole:
    """An AppRole whose policy grants ``capabilities`` on secret/PREFIX/* (metadata: read)."""
    caps = ", ".join(f'"{c}"' for c in capabilities)
    policy = f'path "secret/data/{prefix}/*" {{ capabilities = [{caps}] }}\n'
    policy += f'path "secret/metadata/{prefix}/*" {{ capabilities = ["read"] }}\n'
    bao.api("PUT", f"sys/policies/acl/{name}", {"policy": policy})
    if "approle/" not in bao.api("GET", "sys/auth")["data"]:
        bao.api("POST", "sys/auth/approle", {"type": "approle"})
    bao.api(
        "POST",
        f"auth/approle/role/{name}",
        {"token_policies": [name], "token_ttl": "1h", "secret_id_ttl": "24h"},
    )
    role_id = bao.api("GET", f"auth/approle/role/{name}/role-id")["data"]["role_id"]
    secret_id = bao.api("POST", f"auth/approle/role/{name}/secret-id", {})["data"]["secret_id"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.role_id").write_text(role_id + "\n")
    (directory / f"{name}.secret_id").write_text(secret_id + "\n")
    return AppRole(directory / f"{name}.role_id", directory / f"{name}.secret_id")


# --- moto (AWS Secrets Manager) -------------------------------------------------------------------


def moto_server(home: Path) -> Server:
    """A moto server (in memory: a restart starts empty); not started yet. Clients use its
    ``url`` as their endpoint URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), **AWS_ENV}
    return Server(home, argv, f"{url}/moto-api/", env)


def secrets_manager(url: str) -> Any:
    import boto3

    return boto3.client(
        "secretsmanager",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


# --- shared fixtures (registered for every package by tests/conftest.py) ---------------------


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    """One OpenBao for a whole test module."""
    b = openbao(tmp_path_factory.mktemp("bao"))
    b.server.start()
    try:
        yield b
    finally:
        b.server.stop()


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One moto server for a whole test module; its endpoint URL."""
    server = moto_server(tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as o:
        yield o


@pytest.fixture
def make_sim(tmp_path: Path, origin: Origin) -> Iterator[Callable[..., Sim]]:
    """make_sim(*tunnels) -> a running simulator with those tunnels (default: "portal")."""
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


def assert_no_replicas_left(root: Path) -> None:
    """No cloudflared started under ``root`` may outlive its test (they are killed, then the
    test fails)."""
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(str(root) in part for part in (p.info["cmdline"] or []))
        and "cloudflared" in " ".join(p.info["cmdline"] or [])
    ]
    for p in leftovers:
        p.kill()
    assert not leftovers, f"replicas left behind: {[p.pid for p in leftovers]}"


@pytest.fixture
def run_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """run_daemon(config, env=None, prefix=None) -> a running daemon; stopped after the test,
    and no replica may outlive it."""
    started: list[Daemon] = []

    def start(
        config: Path, env: dict[str, str] | None = None, prefix: list[str] | None = None
    ) -> Daemon:
        d = start_daemon(config, env=env, prefix=prefix)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
    assert_no_replicas_left(tmp_path)


# --- Alertmanager -------------------------------------------------------------------------------


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
    binary = debian_binary("prometheus-alertmanager", "alertmanager")
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
