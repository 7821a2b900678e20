"""cloudflared-sim's command line, parsed the way cloudflared's urfave/cli + Go flag do.

Go flag rules: ``-name``, ``--name``, ``-name=value``, ``--name value``; boolean flags take no
separate value; parsing stops at the first non-flag argument or ``--``. Flag errors print
``Incorrect Usage. <error>`` (``Incorrect Usage: <error>`` for ``run``), a blank line and the
help text on stdout, and exit 0, as measured on cloudflared 2026.8.2. Usage errors from the
command itself (bad token, unreadable token file) exit 255 with cloudflared's texts.

Over 300 lines because the whole urfave/cli + Go flag grammar the simulator accepts.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_BOOL, _STR, _INT, _DUR, _LIST = "bool", "str", "int", "duration", "list"

# canonical name -> (kind, env vars, aliases)
TUNNEL_FLAGS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "no-autoupdate": (_BOOL, ("NO_AUTOUPDATE",), ()),
    "autoupdate-freq": (_DUR, (), ()),
    "metrics": (_STR, ("TUNNEL_METRICS",), ()),
    "output": (_STR, ("TUNNEL_MANAGEMENT_OUTPUT", "TUNNEL_LOG_OUTPUT"), ()),
    "loglevel": (_STR, ("TUNNEL_LOGLEVEL",), ()),
    "transport-loglevel": (_STR, ("TUNNEL_TRANSPORT_LOGLEVEL",), ("proto-loglevel",)),
    "logfile": (_STR, ("TUNNEL_LOGFILE",), ()),
    "log-directory": (_STR, ("TUNNEL_LOGDIRECTORY",), ()),
    "edge": (_LIST, ("TUNNEL_EDGE",), ()),
    "grace-period": (_DUR, ("TUNNEL_GRACE_PERIOD",), ()),
    "label": (_STR, (), ()),
    "pidfile": (_STR, ("TUNNEL_PIDFILE",), ()),
    "retries": (_INT, ("TUNNEL_RETRIES",), ()),
    "ha-connections": (_INT, (), ()),
    "protocol": (_STR, ("TUNNEL_TRANSPORT_PROTOCOL",), ("p",)),
    "region": (_STR, ("TUNNEL_REGION",), ()),
    "no-prechecks": (_BOOL, ("TUNNEL_NO_PRECHECKS",), ()),
    "config": (_STR, (), ()),
    "edge-ip-version": (_STR, ("TUNNEL_EDGE_IP_VERSION",), ()),
    "edge-bind-address": (_STR, ("TUNNEL_EDGE_BIND_ADDRESS",), ()),
    "tag": (_LIST, ("TUNNEL_TAG",), ()),
    "post-quantum": (_BOOL, ("TUNNEL_POST_QUANTUM",), ("pq",)),
    "management-diagnostics": (_BOOL, ("TUNNEL_MANAGEMENT_DIAGNOSTICS",), ()),
    "help": (_BOOL, (), ("h",)),
}
APP_FLAGS = {**TUNNEL_FLAGS, "version": (_BOOL, (), ("v", "V"))}
RUN_FLAGS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "token": (_STR, ("TUNNEL_TOKEN",), ()),
    "token-file": (_STR, ("TUNNEL_TOKEN_FILE",), ()),
    "force": (_BOOL, (), ("f",)),
    "credentials-file": (_STR, ("TUNNEL_CRED_FILE",), ("cred-file",)),
    "credentials-contents": (_STR, ("TUNNEL_CRED_CONTENTS",), ()),
    "protocol": (_STR, ("TUNNEL_TRANSPORT_PROTOCOL",), ("p",)),
    "post-quantum": (_BOOL, ("TUNNEL_POST_QUANTUM",), ("pq",)),
    "features": (_LIST, ("TUNNEL_FEATURES",), ("F",)),
    "icmpv4-src": (_STR, ("TUNNEL_ICMPV4_SRC",), ()),
    "icmpv6-src": (_STR, ("TUNNEL_ICMPV6_SRC",), ()),
    "url": (_STR, ("TUNNEL_URL",), ()),
    "hello-world": (_BOOL, ("TUNNEL_HELLO_WORLD",), ()),
    "help": (_BOOL, (), ("h",)),
}
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_TRUE, _FALSE = ("1", "t", "T", "TRUE", "true", "True"), ("0", "f", "F", "FALSE", "false", "False")


class UsageError(Exception):
    """cloudflared's cliutil.UsageError: stderr text + "See 'cloudflared <cmd> --help'.", 255."""

    def __init__(self, text: str, command: str = "tunnel run") -> None:
        super().__init__(text)
        self.command = command


class StartError(Exception):
    """Any other start-up error: its text on stderr, exit 1."""


class FlagError(Exception):
    """A Go flag-package parse error (printed as "Incorrect Usage")."""


@dataclass
class Options:
    metrics: str = ""
    output: str = "default"
    loglevel: str = "info"
    logfile: str | None = None
    edges: list[str] = field(default_factory=list)
    grace_seconds: float = 30.0
    label: str = ""
    pidfile: str = ""
    retries: int = 5
    ha_connections: int = 4
    protocol: str = "auto"


def sim_version() -> tuple[str, str]:
    return (
        os.environ.get("CLOUDFLARED_SIM_VERSION") or "2026.8.2",
        os.environ.get("CLOUDFLARED_SIM_BUILD_DATE") or "2026-08-20",
    )


def parse_go_duration(text: str) -> float:
    """Go's time.ParseDuration, in seconds."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    body = s.lstrip("+-")
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION.match(body, pos)
        if not m or m.group(1) in ("", "."):
            raise ValueError(text)
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if not body:
        raise ValueError(text)
    return sign * total


def _convert(kind: str, name: str, value: str) -> Any:
    try:
        if kind == _BOOL:
            if value in _TRUE or value in _FALSE:
                return value in _TRUE
            raise ValueError(value)
        if kind == _INT:
            return int(value, 0)
        if kind == _DUR:
            return parse_go_duration(value)
    except ValueError:
        raise FlagError(f'invalid value "{value}" for flag -{name}: parse error') from None
    return value


def parse_flags(
    args: list[str], specs: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]
) -> tuple[dict[str, Any], list[str]]:
    aliases = {a: name for name, (_, _, al) in specs.items() for a in al}
    values: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if len(arg) < 2 or not arg.startswith("-"):
            break
        if arg == "--":
            i += 1
            break
        name = arg[2:] if arg.startswith("--") else arg[1:]
        if not name or name[0] in "-=":
            raise FlagError(f"bad flag syntax: {arg}")
        name, has_value, value = name.partition("=")
        canonical = aliases.get(name, name)
        if canonical not in specs:
            raise FlagError(f"flag provided but not defined: -{name}")
        kind = specs[canonical][0]
        if kind == _BOOL:
            values[canonical] = _convert(kind, name, value) if has_value else True
        else:
            if not has_value:
                if i + 1 >= len(args):
                    raise FlagError(f"flag needs an argument: -{name}")
                i += 1
                value = args[i]
            if kind == _LIST:
                values.setdefault(canonical, []).append(value)
            else:
                values[canonical] = _convert(kind, name, value)
        i += 1
    return values, args[i:]


def _with_env(
    values: dict[str, Any], specs: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]
) -> dict[str, Any]:
    out = dict(values)
    for name, (kind, envs, _) in specs.items():
        if name in out:
            continue
        for env in envs:
            raw = os.environ.get(env)
            if raw is None or raw == "":
                continue
            if kind == _LIST:
                out[name] = [part.strip() for part in raw.split(",") if part.strip()]
            else:
                out[name] = _convert(kind, name, raw)
            break
    return out


def _help(command: str, specs: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]) -> str:
    name = f"cloudflared {command}".rstrip()
    lines = [
        "NAME:",
        f"   {name} - Cloudflare Tunnel client (cloudflared-sim)",
        "",
        "USAGE:",
        f"   {name} [command options] [arguments...]",
        "",
        "OPTIONS:",
    ]
    for name, (kind, envs, aliases) in specs.items():
        names = ", ".join(("--" if len(n) > 1 else "-") + n for n in (name, *aliases))
        value = "" if kind == _BOOL else " value"
        env = f" [{', '.join('$' + e for e in envs)}]" if envs else ""
        lines.append(f"   {names}{value}{env}")
    return "\n".join(lines) + "\n"


def _incorrect_usage(sep: str, err: FlagError, command: str, specs: Any) -> int:
    sys.stdout.write(f"Incorrect Usage{sep} {err}\n\n{_help(command, specs)}")
    return 0  # sic: cloudflared 2026.8.2 exits 0 here (measured)


def dispatch(
    args: list[str], run_tunnel: Callable[[Options, dict[str, Any], list[str]], int]
) -> int:
    try:
        top, rest = parse_flags(args, APP_FLAGS)
        top = _with_env(top, APP_FLAGS)
    except FlagError as exc:
        return _incorrect_usage(".", exc, "", APP_FLAGS)
    version, build_date = sim_version()
    if top.get("version"):
        sys.stdout.write(f"cloudflared version {version} (built {build_date})\n")
        return 0
    if top.get("help") or not rest or rest[0] == "help":
        sys.stdout.write(_help("", APP_FLAGS))
        return 0
    if rest[0] == "version":
        short = any(a in ("--short", "-short", "-s", "--s") for a in rest[1:])
        sys.stdout.write(
            f"{version}\n" if short else f"cloudflared version {version} (built {build_date})\n"
        )
        return 0
    if rest[0] != "tunnel":
        raise UsageError(_NO_ARGS, "tunnel")
    try:
        tun, rest = parse_flags(rest[1:], TUNNEL_FLAGS)
    except FlagError as exc:
        return _incorrect_usage(".", exc, "tunnel", TUNNEL_FLAGS)
    merged = {**top, **tun}
    if merged.get("help") or (rest and rest[0] == "help"):
        sys.stdout.write(_help("tunnel", TUNNEL_FLAGS))
        return 0
    if rest and rest[0] == "ready":
        return _ready(merged)
    if not rest or rest[0] != "run":
        raise UsageError(_NO_ARGS, "tunnel")
    try:
        run_values, positional = parse_flags(rest[1:], RUN_FLAGS)
        run_values = _with_env(run_values, RUN_FLAGS)
    except FlagError as exc:
        return _incorrect_usage(":", exc, "tunnel run", RUN_FLAGS)
    if run_values.get("help"):
        sys.stdout.write(_help("tunnel run", RUN_FLAGS))
        return 0
    opts = _options({**merged, **{k: v for k, v in run_values.items() if k == "protocol"}})
    return run_tunnel(opts, run_values, positional)


_NO_ARGS = (
    "You did not specify any valid additional argument to the cloudflared tunnel command.\n\n"
    "If you are trying to run a Quick Tunnel then you need to explicitly pass the --url flag.\n"
    "Eg. cloudflared tunnel --url localhost:8080/."
)


def _options(v: dict[str, Any]) -> Options:
    logfile = v.get("logfile") or None
    if logfile is None and v.get("log-directory"):
        logfile = os.path.join(v["log-directory"], "cloudflared.log")
    return Options(
        metrics=v.get("metrics", ""),
        output="json" if v.get("output") == "json" else "default",
        loglevel=v.get("loglevel", "info"),
        logfile=logfile,
        edges=[e for item in v.get("edge", []) for e in item.split(",") if e],
        grace_seconds=max(0.0, v.get("grace-period", 30.0)),
        label=v.get("label", ""),
        pidfile=v.get("pidfile", ""),
        retries=v.get("retries", 5),
        ha_connections=v.get("ha-connections", 4),
        protocol=v.get("protocol", "auto"),
    )


def _ready(v: dict[str, Any]) -> int:
    import urllib.error
    import urllib.request

    addr = v.get("metrics")
    if not addr:
        raise StartError("--metrics has to be provided")
    url = f"http://{addr}/ready"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            if resp.status == 200:
                return 0
            status, body = resp.status, resp.read(65536)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(65536)
    except (OSError, ValueError) as exc:
        raise StartError(f'Get "{url}": {exc}') from None
    raise StartError(
        f"{url} endpoint returned status code {status}\n{body.decode('utf-8', 'replace')}"
    )
