"""Commands that talk to a running daemon: ``status`` (HTTP) and ``rotate`` (control socket)."""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx

from tunnelkeeper.config.model import Config


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
    try:
        resp = httpx.get(url, timeout=5.0, trust_env=False)
        resp.raise_for_status()
        status: dict[str, Any] = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        print(
            f"tunnelkeeper: daemon not reachable at {url} ({type(exc).__name__}: {exc})",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(status, indent=2) if as_json else render(status))
    return 0


def rotate_command(config_path: str, tunnel: str | None, *, force: bool) -> int:
    config = _load(config_path)
    if config is None:
        return 1
    sock = config.daemon.runtime_dir / "control.sock"
    transport = httpx.HTTPTransport(uds=str(sock))
    # A roll takes a while: each replica must become ready at the edge before the next.
    timeout = (
        max(
            t.replicas * (config.daemon.ready_timeout_seconds + t.grace_period_seconds + 10)
            for t in config.tunnels
        )
        + 60
    )
    try:
        with httpx.Client(transport=transport, timeout=timeout, trust_env=False) as client:
            resp = client.post("http://daemon/rotate", json={"tunnel": tunnel, "force": force})
        body: dict[str, Any] = resp.json()
    except PermissionError:
        print(
            f"tunnelkeeper: permission denied on {sock}: run as root or the daemon's user",
            file=sys.stderr,
        )
        return 1
    except (httpx.HTTPError, ValueError, OSError) as exc:
        print(
            f"tunnelkeeper: daemon not reachable on {sock} ({type(exc).__name__}: {exc})",
            file=sys.stderr,
        )
        return 1
    if "error" in body:
        print(f"tunnelkeeper: {body['error']}", file=sys.stderr)
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
