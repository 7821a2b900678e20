"""The daemon's HTTP: read-only endpoints on ``daemon.listen`` (loopback by default) and the
control endpoints (rotate, reload) on a 0600 unix socket in runtime_dir, so that only root and
the daemon's own user can act, whatever the TCP listener is bound to."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

Probe = Callable[[], tuple[bool, str]]
MAX_CONTROL_BODY = 64 * 1024


class DaemonWeb:
    def __init__(
        self,
        *,
        metrics: Callable[[], bytes],
        healthz: Probe,
        readyz: Probe,
        status: Callable[[], dict[str, Any]],
        rotate: Callable[[str | None, bool], Awaitable[dict[str, Any]]],
        reload: Callable[[], Awaitable[dict[str, Any]]],
    ) -> None:
        self._metrics, self._healthz, self._readyz, self._status = metrics, healthz, readyz, status
        self._rotate, self._reload = rotate, reload
        self._runners: list[web.AppRunner] = []

    def _public_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/healthz", self._probe(self._healthz))
        app.router.add_get("/readyz", self._probe(self._readyz))
        app.router.add_get("/status", self._get_status)
        return app

    def _control_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_CONTROL_BODY)
        app.router.add_get("/status", self._get_status)
        app.router.add_post("/rotate", self._post_rotate)
        app.router.add_post("/reload", self._post_reload)
        return app

    async def start(self, host: str, port: int, control_socket: Path) -> None:
        public = web.AppRunner(self._public_app(), access_log=None, handle_signals=False)
        await public.setup()
        self._runners.append(public)
        await web.TCPSite(public, host, port, reuse_address=True).start()
        control = web.AppRunner(self._control_app(), access_log=None, handle_signals=False)
        await control.setup()
        self._runners.append(control)
        if control_socket.is_socket():
            control_socket.unlink()
        old_umask = os.umask(0o177)
        try:
            await web.UnixSite(control, str(control_socket)).start()
        finally:
            os.umask(old_umask)
        os.chmod(control_socket, 0o600)

    async def aclose(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    async def _get_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @staticmethod
    def _probe(check: Probe) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            ok, text = check()
            return web.Response(status=200 if ok else 503, text=text + "\n")

        return handler

    async def _get_status(self, request: web.Request) -> web.Response:
        return web.json_response(self._status(), dumps=lambda o: json.dumps(o, indent=1))

    async def _post_rotate(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        tunnel = body.get("tunnel")
        force = body.get("force", False)
        if (tunnel is not None and not isinstance(tunnel, str)) or not isinstance(force, bool):
            return web.json_response(
                {"error": "tunnel must be a string, force a boolean"}, status=400
            )
        result = await self._rotate(tunnel, force)
        return web.json_response(result, status=404 if result.get("error") else 200)

    async def _post_reload(self, request: web.Request) -> web.Response:
        return web.json_response(await self._reload())
