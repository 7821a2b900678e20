"""OpenBao and moto servers that a fault test can stop (the fault) and start again on the same
port, stopped by the pid they were started with."""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.harness import VENV_BIN
from tests.waiting import free_port, wait_until

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, trust_env=False, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class Server:
    """A server process that a test can stop (the fault) and start again on the same port."""

    def __init__(self, home: Path, argv: list[str], ready_url: str, env: dict[str, str]) -> None:
        self.home, self.argv, self.ready_url, self.env = home, argv, ready_url, env
        self.proc: subprocess.Popen[bytes] | None = None

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
            lambda: proc.poll() is not None or _answers(self.ready_url), timeout=45, what="server"
        )
        assert proc.poll() is None, (self.home / "server.log").read_text()[-2000:]

    def stop(self) -> None:
        _stop(self.proc)


@dataclass
class Bao:
    server: Server
    addr: str
    root_token: str

    def put(self, path: str, data: dict[str, Any]) -> None:
        r = httpx.post(
            f"{self.addr}/v1/secret/data/{path}",
            json={"data": data},
            headers={"X-Vault-Token": self.root_token},
            trust_env=False,
            timeout=10,
        )
        assert r.status_code < 300, r.text[:200]


def openbao(home: Path) -> Bao:
    """An OpenBao dev server (in memory: a restart starts empty, with the same root token);
    not started yet."""
    port = free_port()
    root = secrets.token_hex(16)
    addr = f"http://127.0.0.1:{port}"
    argv = [
        str(VENV_BIN / "bao"),
        "server",
        "-dev",
        f"-dev-listen-address=127.0.0.1:{port}",
        f"-dev-root-token-id={root}",
    ]
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return Bao(Server(home, argv, f"{addr}/v1/sys/health", env), addr, root)


def moto_server(home: Path) -> Server:
    """A moto server (in memory: a restart starts empty); not started yet. Clients use its
    ``ready_url`` without the ``/moto-api/`` path as their endpoint URL."""
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
