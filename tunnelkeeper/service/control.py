"""Commands that talk to a running daemon: ``status`` (HTTP) and ``rotate`` (control socket).

The standard library's ``http.client`` does the talking: a CLI that answers instantly cannot
afford to import an HTTP client library (httpx alone takes longer to import than the whole
``status`` command may run).
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
from pathlib import Path
from typing import Any

from tunnelkeeper.config.model import Config


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("daemon", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _call(
    conn: http.client.HTTPConnection, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    """One request; the JSON reply (ValueError if it is not JSON)."""
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _load(config_path: str) -> Config | None:
    from tunnelkeeper.config.load import ConfigError, load_config

    try:
        return load_config(config_path)
    except ConfigError as exc:
        print(f"tunnelkeeper: invalid config:\n{exc}", file=sys.stderr)
        return None


def _public_url(config: Config) -> str:
    host = config.daemon.listen_host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.daemon.listen_port}"


def status_command(config_path: str, *, as_json: bool) -> int:
    from tunnelkeeper.service.statusview import render

    config = _load(config_path)
    if config is None:
        return 1
    url = _public_url(config) + "/status"
    host, port = config.daemon.listen_host, config.daemon.listen_port
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        code, status = _call(http.client.HTTPConnection(host, port, timeout=5.0), "GET", "/status")
        if code != 200 or not isinstance(status, dict):
            raise ValueError(f"HTTP {code}")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        print(
            f"tunnelkeeper: daemon not reachable at {url} ({type(exc).__name__}: {exc})",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(status, indent=2) if as_json else render(status))
    return 0


def _control_post(
    sock: Path, path: str, payload: dict[str, Any], timeout: float
) -> dict[str, Any] | None:
    """POST to the daemon's control socket; the reply, or None once the reason is printed
    (no daemon, no permission, a broken reply, or the daemon's own error and its problems)."""
    try:
        _, body = _call(_UnixConnection(str(sock), timeout), "POST", path, payload)
        if not isinstance(body, dict):
            raise ValueError("the reply is not a JSON object")
    except PermissionError:
        print(
            f"tunnelkeeper: permission denied on {sock}: run as root or the daemon's user",
            file=sys.stderr,
        )
        return None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        print(
            f"tunnelkeeper: daemon not reachable on {sock} ({type(exc).__name__}: {exc})",
            file=sys.stderr,
        )
        return None
    if "error" in body:
        print(f"tunnelkeeper: {body['error']}", file=sys.stderr)
        for problem in body.get("problems") or []:
            print(f"  {problem}", file=sys.stderr)
        return None
    return body


def rotate_command(config_path: str, tunnel: str | None, *, force: bool) -> int:
    config = _load(config_path)
    if config is None:
        return 1
    sock = config.daemon.runtime_dir / "control.sock"
    # A roll takes a while: each replica must become ready at the edge before the next.
    timeout = (
        max(
            t.replicas * (config.daemon.ready_timeout_seconds + t.grace_period_seconds + 10)
            for t in config.tunnels
        )
        + 60
    )
    body = _control_post(sock, "/rotate", {"tunnel": tunnel, "force": force}, timeout)
    if body is None:
        return 1
    ok = True
    for t in body.get("tunnels", []):
        line = f"{t.get('tunnel')}: {t.get('result')}"
        if t.get("token"):
            line += f" (token {t['token']})"
        if t.get("detail"):
            line += f" — {t['detail']}"
        if t.get("kept"):
            line += f"; {t['kept']}"
        print(line)
        ok = ok and t.get("result") == "done"
    return 0 if ok else 1


def reload_command(config_path: str) -> int:
    """``tunnelkeeper reload`` (the unit's ExecReload=): ask the daemon to re-read its config
    and wait for the outcome, so ``systemctl reload`` fails when the config is refused. A config
    that does not even load is refused here, before the daemon is asked."""
    config = _load(config_path)
    if config is None:
        print("tunnelkeeper: reload refused; the daemon keeps its running config", file=sys.stderr)
        return 1
    sock = config.daemon.runtime_dir / "control.sock"
    body = _control_post(sock, "/reload", {}, RELOAD_TIMEOUT_SECONDS)
    if body is None:
        return 1
    changed = {k: v for k, v in body.items() if k != "reloaded" and v}
    print("reloaded" + (f": {json.dumps(changed, sort_keys=True)}" if changed else ""))
    return 0


RELOAD_TIMEOUT_SECONDS = 60.0
