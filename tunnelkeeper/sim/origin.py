"""A tiny origin web app for the simulator (``--tunnel NAME=builtin``) and for tests.

Routes: ``/`` names the tunnel (from ``X-Forwarded-Host``, which the entry sets),
``/slow?seconds=S`` answers after S seconds, ``/echo`` returns the request as
JSON, ``/status/N`` answers with status N.

Alone: ``python -m tunnelkeeper.sim.origin --port P [--port-file F]`` prints
``origin listening on http://HOST:PORT`` once it listens and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_SLOW_SECONDS = 600.0
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,253}$")


def build_app(default_name: str = "builtin") -> web.Application:
    def tunnel_name(request: web.Request) -> str:
        name = request.headers.get("X-Forwarded-Host", "")
        return name if _SAFE_NAME.match(name) else default_name

    async def index(request: web.Request) -> web.Response:
        name = tunnel_name(request)
        return web.Response(text=f"Hello from the simulator's origin for tunnel {name}.\n")

    async def slow(request: web.Request) -> web.Response:
        try:
            seconds = float(request.query.get("seconds", "1"))
        except ValueError:
            return web.Response(status=400, text="seconds must be a number\n")
        if not 0 <= seconds <= MAX_SLOW_SECONDS:
            return web.Response(status=400, text=f"seconds must be 0..{MAX_SLOW_SECONDS:g}\n")
        await asyncio.sleep(seconds)
        return web.Response(text=f"slept {seconds:g}s for tunnel {tunnel_name(request)}\n")

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body": body.decode("utf-8", errors="replace"),
                "body_base64": base64.b64encode(body).decode(),
                "tunnel": tunnel_name(request),
            }
        )

    async def status(request: web.Request) -> web.Response:
        try:
            code = int(request.match_info["code"])
        except ValueError:
            code = 0
        if not 200 <= code <= 599:
            return web.Response(status=400, text="status must be 200..599\n")
        if code in (204, 304):
            return web.Response(status=code)
        return web.Response(status=code, text=f"status {code}\n")

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/", index)
    app.router.add_route("*", "/slow", slow)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_route("*", "/status/{code}", status)
    return app


async def start_origin(
    host: str, port: int, default_name: str = "builtin"
) -> tuple[web.AppRunner, str]:
    """Start the origin; returns its runner (for cleanup) and its base URL."""
    runner = web.AppRunner(build_app(default_name), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{bound_port(runner)}"


def bound_port(runner: web.BaseRunner) -> int:
    """The port a runner's (single) site listens on, also when it was asked for port 0."""
    return int(runner.addresses[0][1])


async def _serve(host: str, port: int, port_file: Path | None, name: str) -> None:
    runner, url = await start_origin(host, port, name)
    try:
        # handlers first: whoever reads the port file may send SIGTERM at once
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if port_file is not None:
            tmp = port_file.with_name(port_file.name + ".tmp")
            tmp.write_text(url.rsplit(":", 1)[1] + "\n")
            os.replace(tmp, port_file)
        print(f"origin listening on {url}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tunnelkeeper.sim.origin", description="The simulator's test origin."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, default=None)
    parser.add_argument("--name", default="builtin", help="tunnel name shown when none is given")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.host, args.port, args.port_file, args.name))
    except OSError as exc:
        print(f"origin: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
