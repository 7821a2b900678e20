"""Control actions (rotate, reload) are for root and the daemon's user only: the control socket
refuses an unprivileged local user even where the directory lets them reach it, the TCP
listener refuses them outright, and a rotation leaves no old token file behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.security.conftest import Stack
from tests.security.leaks import leaks, run_tk
from tests.waiting import wait_until

pytestmark = pytest.mark.system

# The system Python (stdlib only): the project's venv lives under /root, which `nobody` cannot
# read. The client prints one JSON line: the HTTP status and body, or the OS error.
SYSTEM_PYTHON = "/usr/bin/python3"
CLIENT = r"""
import http.client, json, socket, sys
where, method, path, body = sys.argv[1:5]
class UnixConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(120)
        self.sock.connect(where)
try:
    if where.startswith("/"):
        conn = UnixConnection("daemon", timeout=120)
    else:
        host, port = where.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
    headers = {"Content-Type": "application/json"}
    conn.request(method, path, body=body.encode() or None, headers=headers)
    resp = conn.getresponse()
    print(json.dumps({"status": resp.status, "body": resp.read().decode(errors="replace")}))
except OSError as exc:
    print(json.dumps({"error": type(exc).__name__, "errno": exc.errno}))
"""
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists(SYSTEM_PYTHON),
    reason="switching to the nobody user needs root, setpriv and /usr/bin/python3",
)


def call(where: str, method: str, path: str, body: str = "", *, nobody: bool) -> dict[str, object]:
    argv = [*(AS_NOBODY if nobody else []), SYSTEM_PYTHON, "-c", CLIENT, where, method, path, body]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False, env={"PATH": "/usr/bin"}
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.fixture
def reachable_socket(stack: Stack) -> Iterator[str]:
    """The control socket in a runtime_dir opened to everyone (as a careless RuntimeDirectory
    mode would): only the socket's own permissions stand between `nobody` and the daemon."""
    sock = stack.runtime_dir / "control.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and sock.stat().st_uid == 0
    before = stat.S_IMODE(stack.runtime_dir.stat().st_mode)
    os.chmod(stack.runtime_dir, 0o755)
    try:
        yield str(sock)
    finally:
        os.chmod(stack.runtime_dir, before)


@needs_root
def test_an_unprivileged_user_cannot_rotate_or_reload(stack: Stack, reachable_socket: str) -> None:
    tcp = stack.daemon.url.removeprefix("http://")
    # the same client, as nobody, does reach the daemon's read-only TCP endpoints...
    assert call(tcp, "GET", "/healthz", nobody=True)["status"] == 200
    # ...but not the control socket
    for path, body in (("/rotate", '{"tunnel": "portal", "force": true}'), ("/reload", "{}")):
        denied = call(reachable_socket, "POST", path, body, nobody=True)
        assert denied == {"error": "PermissionError", "errno": 13}, (path, denied)
    # root reaches it (a tunnel that does not exist: the daemon answers without rolling)
    answered = call(reachable_socket, "POST", "/rotate", '{"tunnel": "nope"}', nobody=False)
    assert answered["status"] == 404 and "no tunnel named 'nope'" in str(answered["body"])
    assert call(reachable_socket, "POST", "/reload", "{}", nobody=False)["status"] == 200


@needs_root
def test_the_daemon_created_runtime_dir_is_private(stack: Stack) -> None:
    assert stat.S_IMODE(stack.runtime_dir.stat().st_mode) == 0o700
    denied = call(str(stack.runtime_dir / "control.sock"), "POST", "/reload", "{}", nobody=True)
    assert denied["error"] == "PermissionError"


def test_the_tcp_listener_refuses_control_actions(stack: Stack) -> None:
    for path in ("/rotate", "/reload"):
        resp = httpx.post(stack.daemon.url + path, json={"tunnel": "portal", "force": True})
        assert resp.status_code == 405, path
    assert stack.daemon.tunnel("portal")["replicas"]  # nothing was rolled or stopped


def _token_files(stack: Stack, tunnel: str) -> set[Path]:
    return set((stack.runtime_dir / "replicas").glob(f"{tunnel}.*.token"))


def test_root_rotates_and_old_token_files_go_with_their_replicas(stack: Stack) -> None:
    before = _token_files(stack, "portal")
    old_pids = {r["pid"] for r in stack.daemon.primaries("portal")}
    assert len(before) == 2 and len(old_pids) == 2
    out = run_tk("rotate", "portal", "--force", "-c", str(stack.config), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^portal: done", out.stdout, re.M), out.stdout
    assert leaks(out.stdout + out.stderr, stack.secrets) == []
    wait_until(
        lambda: (
            not any(psutil.pid_exists(p) for p in old_pids)
            and not _token_files(stack, "portal") & before
        ),
        timeout=30,
        what="old replicas gone with their token files",
    )
    after = _token_files(stack, "portal")
    assert len(after) == 2  # the new generation's
    for path in after:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list((stack.runtime_dir / "replicas").glob(".*.tmp"))


def _raw_exchange(family: int, address: str | tuple[str, int], request: bytes) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(address)
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


GARBAGE_REQUESTS = [
    b"\x00\xff\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
    b"POST /rotate HTTP/1.1\r\nContent-Length: 5\r\n\r\n{}",
    b"GET /status HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
    b"BREW /pot HTCPCP/1.0\r\n\r\n",
]


def test_the_tcp_listener_survives_garbage(stack: Stack) -> None:
    host, port = stack.daemon.url.removeprefix("http://").rsplit(":", 1)
    log_before = len(stack.daemon.output())
    for request in GARBAGE_REQUESTS:
        _raw_exchange(socket.AF_INET, (host, int(port)), request)
    assert httpx.get(stack.daemon.url + "/healthz", timeout=10).status_code == 200
    assert "Traceback" not in stack.daemon.output()[log_before:]


def test_the_control_socket_answers_a_bad_content_length(stack: Stack) -> None:
    log_before = len(stack.daemon.output())
    request = b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}"
    answer = _raw_exchange(socket.AF_UNIX, str(stack.runtime_dir / "control.sock"), request)
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0], answer[:200]
    assert "Traceback" not in stack.daemon.output()[log_before:]
