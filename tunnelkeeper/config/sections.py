"""Validating the ``[daemon]``, ``[cloudflared]`` and ``[fleet]`` sections."""

from __future__ import annotations

import re
import socket
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from tunnelkeeper.config.fields import Section, url_problem
from tunnelkeeper.config.listen import listen_problem
from tunnelkeeper.config.model import (
    CloudflaredConfig,
    DaemonConfig,
    FleetConfig,
    InstallConfig,
    defaults,
)

CLOUDFLARED = defaults(CloudflaredConfig)
DAEMON = defaults(DaemonConfig)
FLEET = defaults(FleetConfig)

LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
# flags tunnelkeeper sets on every replica itself; a user value would fight it (or leak a token)
RESERVED_ARGS = (
    "token",
    "token-file",
    "metrics",
    "pidfile",
    "output",
    "grace-period",
    "label",
)
BARE_PROGRAM = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]*")  # found on PATH
_VERSION = re.compile(r"(20\d\d)\.(\d{1,2})\.(\d{1,3})")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_ACCOUNT_ID = re.compile(r"[0-9a-fA-F]{32}")
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def read_daemon(top: Section) -> DaemonConfig:
    d = top.table("daemon") or Section({}, ("daemon",), top.problems)
    listen = d.text("listen", DAEMON["listen"])
    reason = listen_problem(listen)
    if reason is not None:
        d.expected("listen", f'"HOST:PORT" or "[IPv6]:PORT" ({reason})', listen)
        listen = DAEMON["listen"]
    config = DaemonConfig(
        host=d.text("host", "") or socket.gethostname(),
        listen=listen,
        state_dir=d.path("state_dir", DAEMON["state_dir"]),
        runtime_dir=d.path("runtime_dir", DAEMON["runtime_dir"]),
        probe_interval_seconds=d.number(
            "probe_interval_seconds", DAEMON["probe_interval_seconds"], gt=0, le=60
        ),
        metrics_interval_seconds=d.number(
            "metrics_interval_seconds", DAEMON["metrics_interval_seconds"], gt=0, le=600
        ),
        unresponsive_after_seconds=d.number(
            "unresponsive_after_seconds", DAEMON["unresponsive_after_seconds"], gt=0
        ),
        ready_timeout_seconds=d.number(
            "ready_timeout_seconds", DAEMON["ready_timeout_seconds"], gt=0
        ),
        crash_loop_restarts=d.integer("crash_loop_restarts", DAEMON["crash_loop_restarts"], ge=2),
        crash_loop_window_seconds=d.number(
            "crash_loop_window_seconds", DAEMON["crash_loop_window_seconds"], gt=0
        ),
        log_format=d.choice("log_format", DAEMON["log_format"], LOG_FORMATS),
        log_level=d.choice("log_level", DAEMON["log_level"], LOG_LEVELS),
        replica_users=d.choice(
            "replica_users", DAEMON["replica_users"], ("auto", "per-tunnel", "off")
        ),
        replica_uid_base=d.integer(
            "replica_uid_base", DAEMON["replica_uid_base"], ge=1000, le=4_000_000_000
        ),
    )
    d.finish()
    return config


def read_cloudflared(top: Section) -> CloudflaredConfig:
    c = top.table("cloudflared") or Section({}, ("cloudflared",), top.problems)
    path = _binary_path(c)
    args = c.strings("args")
    for index, arg in enumerate(args):
        flag = arg.split("=", 1)[0].lstrip("-") if arg.startswith("-") else None
        if flag in RESERVED_ARGS or arg == "run":
            shown = "run" if arg == "run" else f"--{flag}"  # never the value: it may be a token
            c.problems.add(
                ("cloudflared", "args", index),
                f'"{shown}" is set by tunnelkeeper itself for every replica; remove it',
            )
    install = _read_install(c)
    if install is not None and not path.is_absolute():
        c.problem("path", "must be an absolute path when [cloudflared.install] is set")
    c.finish()
    return CloudflaredConfig(path=path, args=args, install=install)


def _binary_path(c: Section) -> Path:
    value = c.raw("path")
    if value is None:
        return Path(CLOUDFLARED["path"])
    if (
        not isinstance(value, str)
        or not value
        or "\x00" in value
        or not (PurePosixPath(value).is_absolute() or BARE_PROGRAM.fullmatch(value))
    ):
        c.expected("path", "an absolute path (or a bare program name found on PATH)", value)
        return Path(CLOUDFLARED["path"])
    return Path(value)


def _read_install(c: Section) -> InstallConfig | None:
    i = c.table("install")
    if i is None:
        return None
    version = i.text("version", "", required=True)
    match = _VERSION.fullmatch(version)
    if version and (match is None or not 1 <= int(match.group(2)) <= 12):
        i.expected("version", 'a cloudflared version "YYYY.M.P" like "2026.8.2"', version)
    url = i.text("url", "", required=True)
    reason = install_url_problem(url) if url else None
    if reason is not None:
        i.expected("url", reason, url)
    sha256 = i.text("sha256", "", required=True)
    if sha256 and not _SHA256.fullmatch(sha256):
        i.expected("sha256", "64 hex characters (the SHA-256 of the download)", sha256)
    i.finish()
    return InstallConfig(version=version, url=url, sha256=sha256.lower())


def install_url_problem(url: str) -> str | None:
    """What a download URL template should have been, or None when it is fine."""
    placeholders = set(re.findall(r"\{([^{}]*)\}", url))
    if "version" not in placeholders:
        return "a download URL containing {version}"
    if placeholders - {"version", "arch"}:
        return "a URL whose only placeholders are {version} and {arch}"
    concrete = url.replace("{version}", "2026.1.0").replace("{arch}", "amd64")
    scheme = urlsplit(concrete).scheme.lower()
    if scheme == "file":
        return None if concrete.startswith("file:///") else "a file:///absolute/path URL"
    if url_problem(concrete, ("https",)) is None:
        return None
    if url_problem(concrete, ("http",)) is None and urlsplit(concrete).hostname in _LOCAL_HOSTS:
        return None
    return "an https:// URL (http:// only for 127.0.0.1/localhost mirrors, or file:///)"


def read_fleet(top: Section) -> FleetConfig | None:
    f = top.table("fleet")
    if f is None:
        return None
    account_id = f.text("account_id", "", required=True)
    if account_id and not _ACCOUNT_ID.fullmatch(account_id):
        f.expected("account_id", "a Cloudflare account id (32 hex characters)", account_id)
    config = FleetConfig(
        account_id=account_id.lower(),
        api_token_file=f.path("api_token_file", Path(), required=True),
        api_url=f.url("api_url", FLEET["api_url"]),
        poll_seconds=f.number("poll_seconds", FLEET["poll_seconds"], ge=5),
        request_budget=f.integer("request_budget", FLEET["request_budget"], ge=1, le=1200),
    )
    f.finish()
    return config
