"""The daemon's HTTP: read-only endpoints on ``daemon.listen`` (loopback by default) and the
control endpoints (rotate, reload) on a 0600 unix socket in runtime_dir, so that only root and
the daemon's own user can act, whatever the TCP listener is bound to.

Served by the standard library's threading HTTP server (the same one prometheus_client uses):
it keeps the daemon's memory small, and a wedged supervision loop cannot also wedge /healthz.
Handlers that need the daemon's state run their work on the event loop and wait for it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import socketserver
import threading
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

Probe = Callable[[], tuple[bool, str]]
MAX_CONTROL_BODY = 64 * 1024
LOOP_CALL_TIMEOUT_SECONDS = 5.0


class _TCPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _TCP6Server(_TCPServer):
    address_family = socket.AF_INET6


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


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
        self.metrics, self.healthz, self.readyz, self.status = metrics, healthz, readyz, status
        self.rotate, self.reload = rotate, reload
        self.loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[socketserver.BaseServer] = []

    async def start(self, host: str, port: int, control_socket: Path) -> None:
        self.loop = asyncio.get_running_loop()
        server_cls = _TCP6Server if ":" in host else _TCPServer
        self._serve(server_cls((host, port), _handler(self, control=False)))
        if control_socket.is_socket():
            control_socket.unlink()
        old_umask = os.umask(0o177)
        try:
            control = _UnixServer(str(control_socket), _handler(self, control=True))
        finally:
            os.umask(old_umask)
        os.chmod(control_socket, 0o600)
        self._serve(control)

    def _serve(self, server: socketserver.BaseServer) -> None:
        self._servers.append(server)
        threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="tunnelkeeper-http",
            daemon=True,
        ).start()

    async def aclose(self) -> None:
        for server in self._servers:
            await asyncio.to_thread(server.shutdown)
            server.server_close()
        self._servers.clear()

    def in_loop(self, fn: Callable[[], Any]) -> Any:
        """Run a quick function on the event loop (the state's only writer) and return its value."""
        assert self.loop is not None

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(LOOP_CALL_TIMEOUT_SECONDS)

    def await_in_loop(self, coro: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        assert self.loop is not None

        async def call() -> dict[str, Any]:
            return await coro

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result()


def _handler(web: DaemonWeb, *, control: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "tunnelkeeper"
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj, indent=1).encode(), "application/json")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/status":
                    self._json(200, web.in_loop(web.status))
                elif control:
                    self._json(404, {"error": "not found"})
                elif path == "/metrics":
                    self._send(200, web.metrics(), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    # /healthz reads plain fields, so it still answers if the loop is wedged;
                    # /readyz needs the loop and fails if the loop does not answer.
                    ok, text = web.healthz() if path == "/healthz" else web.in_loop(web.readyz)
                    self._send(200 if ok else 503, (text + "\n").encode(), "text/plain")
                else:
                    self._json(404, {"error": "not found"})
            except TimeoutError:
                self._send(503, b"supervision loop did not answer\n", "text/plain")

        def do_POST(self) -> None:
            if not control:
                self._json(405, {"error": "control actions are only on the control socket"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_CONTROL_BODY:
                if length < 0:
                    self._json(400, {"error": "bad Content-Length"})
                    return
                self._json(413, {"error": "body too large"})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except (ValueError, UnicodeDecodeError, RecursionError):
                body = None
            if not isinstance(body, dict):
                self._json(400, {"error": "body must be a JSON object"})
                return
            path = self.path.split("?", 1)[0]
            if path == "/rotate":
                tunnel, force = body.get("tunnel"), body.get("force", False)
                if (tunnel is not None and not isinstance(tunnel, str)) or not isinstance(
                    force, bool
                ):
                    self._json(400, {"error": "tunnel must be a string, force a boolean"})
                    return
                result = web.await_in_loop(web.rotate(tunnel, force))
                self._json(404 if result.get("error") else 200, result)
            elif path == "/reload":
                self._json(200, web.await_in_loop(web.reload()))
            else:
                self._json(404, {"error": "not found"})

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
