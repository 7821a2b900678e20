"""The daemon's ``listen`` address: its checks, and a fast read of it alone for the CLI.

``tunnelkeeper status`` needs nothing else from the config; reading just this key (tomllib and
this module) instead of validating the whole file keeps the command's start-up small. Anything
unusual falls back to the full validation, so errors still name their key.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:9105"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # a config file larger than this is refused


def listen_problem(listen: str) -> str | None:
    """Why ``listen`` is not ``HOST:PORT`` / ``[v6]:PORT``, or None."""
    host, colon, port = listen.rpartition(":")
    if not colon or not host:
        return "no port" if not colon else "no host"
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return "port must be 0-65535"
    if host.startswith("[") and host.endswith("]"):
        import ipaddress  # only for the rare IPv6 listener

        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return "not an IPv6 address inside [ ]"
        return None
    if ":" in host:
        return "write an IPv6 address in brackets"
    if not host.isascii() or not _HOSTNAME.fullmatch(host):
        return "not a host name or address"
    return None


def split_listen(listen: str) -> tuple[str, int]:
    """(host without brackets, port) of a valid ``listen``."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def client_address(listen: str) -> tuple[str, int]:
    """Where a local client reaches a daemon listening on ``listen`` (a wildcard address is
    reached on loopback)."""
    host, port = split_listen(listen)
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host), port


def quick_listen(path: str | Path) -> str | None:
    """``[daemon] listen`` of the config file at ``path`` when it is plainly valid, else None
    (then the caller validates the whole file for a clear error)."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            return None
        config = tomllib.loads(data.decode("utf-8").removeprefix("\ufeff"))
    except (OSError, ValueError, RecursionError, MemoryError):  # also TOML and UTF-8 errors
        return None
    daemon = config.get("daemon", {})
    if not isinstance(daemon, dict):
        return None
    listen = daemon.get("listen", DEFAULT_LISTEN)
    if not isinstance(listen, str) or listen_problem(listen) is not None:
        return None
    return listen
