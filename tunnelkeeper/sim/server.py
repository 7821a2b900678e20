"""``tunnelkeeper sim``: the simulated edge, API, public HTTP entry and builtin origin.

Everything runs in one asyncio process. Token files and the ready file are
written atomically (0600) once every listener is up; SIGTERM/SIGINT stop it
cleanly with exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from tunnelkeeper.atomicfile import write_private_file
from tunnelkeeper.sim.api import PREFIX, Api
from tunnelkeeper.sim.edge import Edge
from tunnelkeeper.sim.entry import Entry
from tunnelkeeper.sim.origin import bound_port, start_origin
from tunnelkeeper.sim.ratelimit import RateLimiter
from tunnelkeeper.sim.state import Account

log = logging.getLogger("tunnelkeeper.sim")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HEX = re.compile(r"^[0-9a-fA-F]{1,64}$")
BUILTIN = "builtin"


def _tunnel_arg(text: str) -> tuple[str, str]:
    name, sep, origin = text.partition("=")
    if not sep or not _NAME.match(name):
        raise argparse.ArgumentTypeError(
            f"expected NAME=ORIGIN_URL with NAME made of letters, digits, '.', '_', '-': {text!r}"
        )
    if origin != BUILTIN:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise argparse.ArgumentTypeError(
                f"origin of {name!r} must be an http(s):// URL or 'builtin'"
            )
    return name, origin


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0: {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tunnelkeeper sim",
        description="Simulated Cloudflare: edge, tunnel API and public HTTP entry.",
    )
    p.add_argument(
        "--tunnel",
        action="append",
        type=_tunnel_arg,
        required=True,
        metavar="NAME=ORIGIN_URL",
        help="a tunnel and its origin URL, or NAME=builtin",
    )
    p.add_argument("--token-dir", type=Path, required=True, help="writes NAME.token here (0600)")
    p.add_argument("--ready-file", type=Path, required=True, help="JSON written once listening")
    p.add_argument("--listen", default="127.0.0.1", metavar="HOST")
    for name in ("edge", "api", "http"):
        p.add_argument(f"--{name}-port", type=_port, default=0, metavar="N", help="0 = any free")
    p.add_argument("--account-id", default=None, metavar="HEX")
    p.add_argument("--api-token", default=None, metavar="T", help="default: random")
    p.add_argument(
        "--api-token-file",
        type=Path,
        default=None,
        metavar="F",
        help="read the API token from F (keeps it off the command line)",
    )
    p.add_argument("--rate-limit", type=_positive(int), default=1200, metavar="N")
    p.add_argument("--rate-window-seconds", type=_positive(float), default=300.0, metavar="S")
    p.add_argument("--rate-block-seconds", type=_positive(float), default=300.0, metavar="S")
    p.add_argument("--pending-reconnect-seconds", type=_positive(float), default=120.0)
    return p


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    fmt = logging.Formatter("%(asctime)s sim %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    fmt.converter = time.gmtime
    handler.setFormatter(fmt)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


async def _start(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def run(args: argparse.Namespace) -> int:
    account = Account(args.account_id, args.pending_reconnect_seconds)
    limiter = RateLimiter(args.rate_limit, args.rate_window_seconds, args.rate_block_seconds)
    runners: list[web.AppRunner] = []
    servers: list[asyncio.Server] = []
    edge = Edge(account)
    try:
        try:
            origin_runner, origin_url = await start_origin(args.listen, 0)
            runners.append(origin_runner)
            for name, origin in args.tunnel:
                account.create_tunnel(name, origin_url if origin == BUILTIN else origin)
            api = Api(
                account,
                edge,
                api_token=args.api_token,
                limiter=limiter,
                default_origin_url=origin_url,
            )
            entry = Entry(account, edge)
            edge_server = await edge.listen(args.listen, args.edge_port)
            servers.append(edge_server)
            ports = {"edge": int(edge_server.sockets[0].getsockname()[1])}
            for label, app, port in (
                ("api", api.app(), args.api_port),
                ("http", entry.app(), args.http_port),
            ):
                runner = await _start(app, args.listen, port)
                runners.append(runner)
                ports[label] = bound_port(runner)
        except OSError as exc:
            print(f"tunnelkeeper sim: cannot listen on {args.listen}: {exc}", file=sys.stderr)
            return 1
        host = _host(args.listen)
        ready = {
            "edge": f"{host}:{ports['edge']}",
            "api": f"http://{host}:{ports['api']}{PREFIX}",
            "http": f"http://{host}:{ports['http']}",
            "origin": origin_url,
            "account_id": account.account_id,
            "api_token": args.api_token,
            "tunnels": {t.name: t.id for t in account.tunnels.values()},
            "pid": os.getpid(),
        }
        # handlers first: whoever reads the ready file may send SIGTERM at once
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            for tunnel in account.tunnels.values():
                token = account.token_for(tunnel)
                write_private_file(args.token_dir / f"{tunnel.name}.token", token.reveal() + "\n")
            write_private_file(args.ready_file, json.dumps(ready, indent=2) + "\n")
        except OSError as exc:
            print(f"tunnelkeeper sim: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
            return 1
        log.info(
            "sim_ready edge=%s api=%s http=%s tunnels=%s",
            ready["edge"],
            ready["api"],
            ready["http"],
            ",".join(ready["tunnels"]),
        )
        await stop.wait()
        log.info("sim_stopping")
        return 0
    finally:
        for server in servers:
            server.close()
        await edge.close_all()
        for runner in reversed(runners):
            await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.account_id is None:
        args.account_id = secrets.token_hex(16)
    elif not _HEX.match(args.account_id):
        parser.error("--account-id must be hexadecimal (Cloudflare account ids are 32 hex digits)")
    args.account_id = args.account_id.lower()
    if args.api_token_file is not None:
        if args.api_token is not None:
            parser.error("give --api-token or --api-token-file, not both")
        try:
            args.api_token = args.api_token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            parser.error(f"--api-token-file {args.api_token_file}: cannot read it ({exc})")
    if args.api_token is None:
        args.api_token = secrets.token_urlsafe(30)
    elif not args.api_token.strip() or any(c.isspace() for c in args.api_token):
        parser.error("--api-token must be non-empty and without spaces")
    names = [name.lower() for name, _ in args.tunnel]
    if len(set(names)) != len(names):
        parser.error("each --tunnel NAME must be unique")
    try:
        args.token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        parser.error(f"--token-dir {args.token_dir}: {exc.strerror}")
    if not args.ready_file.parent.is_dir():
        parser.error(f"--ready-file: directory {args.ready_file.parent} does not exist")
    _setup_logging()
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0
