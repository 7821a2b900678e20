"""Commands that talk to a running daemon: ``status`` (HTTP) and ``rotate`` and ``reload``
(control socket).

These are the commands people run by hand and scripts run in loops, so they import little:
:mod:`tunnelkeeper.service.httpcall` (not an HTTP client library; httpx alone takes longer to
import than the whole ``status`` command may run), and ``status`` reads only the ``listen`` key
of a plainly valid config instead of validating the whole file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunnelkeeper.config.listen import client_address, quick_listen
from tunnelkeeper.service.httpcall import call

if TYPE_CHECKING:
    from tunnelkeeper.config.model import Config


def _load(config_path: str) -> Config | None:
    from tunnelkeeper.config.load import ConfigError, load_config

    try:
        return load_config(config_path)
    except ConfigError as exc:
        print(f"tunnelkeeper: invalid config:\n{exc}", file=sys.stderr)
        return None


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def status_command(config_path: str, *, as_json: bool) -> int:
    listen = quick_listen(config_path)
    if listen is None:  # something unusual: the whole validation says what
        config = _load(config_path)
        if config is None:
            return 1
        listen = config.daemon.listen
    address = client_address(listen)
    url = _url(*address) + "/status"
    try:
        code, status = call(address, "GET", "/status", timeout=5.0)
        if code != 200 or not isinstance(status, dict):
            raise ValueError(f"HTTP {code}")
    except (OSError, ValueError) as exc:
        print(
            f"tunnelkeeper: daemon not reachable at {url} ({type(exc).__name__}: {exc})",
            file=sys.stderr,
        )
        return 1
    if as_json:
        print(json.dumps(status, indent=2))
        return 0
    from tunnelkeeper.service.statusview import render

    try:
        table = render(status)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # not our daemon's shape
        print(
            f"tunnelkeeper: {url} did not answer as a tunnelkeeper daemon does"
            f" ({type(exc).__name__}: {exc}); is `listen` another service's address?",
            file=sys.stderr,
        )
        return 1
    print(table)
    return 0


def _control_post(
    sock: Path, path: str, payload: dict[str, Any], timeout: float
) -> dict[str, Any] | None:
    """POST to the daemon's control socket; the reply, or None once the reason is printed
    (no daemon, no permission, a broken reply, or the daemon's own error and its problems)."""
    try:
        _, body = call(str(sock), "POST", path, payload, timeout=timeout)
        if not isinstance(body, dict):
            raise ValueError("the reply is not a JSON object")
    except PermissionError:
        print(
            f"tunnelkeeper: permission denied on {sock}: run as root or the daemon's user",
            file=sys.stderr,
        )
        return None
    except (OSError, ValueError) as exc:
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
