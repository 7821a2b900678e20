"""Fixtures for token-source tests: tokens, a real OpenBao dev server and a real moto server."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.waiting import free_port, wait_until
from tunnelkeeper.tunneltoken import TunnelToken

VENV_BIN = Path(sys.executable).parent
ACCOUNT = "5ab4e9dfbd435d24068829fda0077963"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def new_token(tunnel_id: str | None = None) -> TunnelToken:
    return TunnelToken.build(ACCOUNT, tunnel_id or str(uuid.uuid4()), os.urandom(32))


def assert_safe(message: str, *tokens: TunnelToken) -> None:
    """An error or log text must never carry a token or its secret."""
    for token in tokens:
        assert token.reveal() not in message
        assert base64.b64encode(token.secret).decode() not in message
        assert token.reveal()[8:40] not in message


@pytest.fixture
def make_token() -> Callable[..., TunnelToken]:
    return new_token


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- OpenBao ---------------------------------------------------------------------------------


@dataclass
class Bao:
    addr: str
    root_token: str

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        headers = {"X-Vault-Token": token or self.root_token}
        with httpx.Client(base_url=self.addr, trust_env=False, timeout=10) as client:
            resp = client.request(method, f"/v1/{path}", json=body, headers=headers)
        assert resp.status_code < 300, (method, path, resp.status_code, resp.text)
        return resp.json() if resp.content else None

    def put(self, path: str, data: dict[str, Any]) -> int:
        return int(self.api("POST", f"secret/data/{path}", {"data": data})["data"]["version"])


def _healthy(addr: str) -> bool:
    try:
        return httpx.get(f"{addr}/v1/sys/health", trust_env=False, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


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
            wait_until(lambda: proc.poll() is not None or _healthy(addr), timeout=30)
            assert proc.poll() is None, (home / "server.log").read_text()[-2000:]
            yield Bao(addr, root)
        finally:
            stop(proc)


@dataclass
class AppRole:
    role_id_file: Path
    secret_id_file: Path


@pytest.fixture(scope="module")
def approle(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> AppRole:
    """AppRole ``tk`` with a read-only policy on secret/tk/* (as in secrets.md §5)."""
    policy = 'path "secret/data/tk/*" { capabilities = ["read"] }\n'
    policy += 'path "secret/metadata/tk/*" { capabilities = ["read"] }\n'
    bao.api("PUT", "sys/policies/acl/tk-read", {"policy": policy})
    bao.api("POST", "sys/auth/approle", {"type": "approle"})
    bao.api(
        "POST",
        "auth/approle/role/tk",
        {"token_policies": ["tk-read"], "token_ttl": "1h", "secret_id_ttl": "24h"},
    )
    role_id = bao.api("GET", "auth/approle/role/tk/role-id")["data"]["role_id"]
    secret_id = bao.api("POST", "auth/approle/role/tk/secret-id", {})["data"]["secret_id"]
    d = tmp_path_factory.mktemp("approle")
    (d / "role_id").write_text(role_id + "\n")
    (d / "secret_id").write_text(secret_id + "\n")
    return AppRole(d / "role_id", d / "secret_id")


@pytest.fixture
def kv_path() -> str:
    return f"tk/{uuid.uuid4().hex[:12]}"


# --- moto ------------------------------------------------------------------------------------


def _moto_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/moto-api/", trust_env=False, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


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
            wait_until(lambda: proc.poll() is not None or _moto_ready(url), timeout=45)
            assert proc.poll() is None, (home / "server.log").read_text()[-2000:]
            yield url
        finally:
            stop(proc)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials, and never a probe of the instance-metadata address."""
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    for key in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
