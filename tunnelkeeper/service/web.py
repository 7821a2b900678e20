"""The daemon's HTTP: read-only endpoints on ``daemon.listen`` (loopback by default) and the
control endpoints (rotate, reload) on a 0600 unix socket in runtime_dir, so that only root and
the daemon's own user can act, whatever the TCP listener is bound to.

Served from a thread of its own running its own event loop (h11 parses HTTP/1.1): a wedged
supervision loop cannot also wedge /healthz, and nothing a client does can reach the
supervision loop except through the few calls below, each with a deadline. Every resource an
outside client can hold is bounded (:mod:`~tunnelkeeper.service.httpconn`): connections (at the
cap the longest-idle one is evicted, so a flood of idle sockets cannot lock out Prometheus),
the time to send a request, idle keep-alive, header and body sizes.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tunnelkeeper.promtext import CONTENT_TYPE
from tunnelkeeper.service.httpconn import ConnectionPool, Reply, Request

Probe = Callable[[], tuple[bool, str]]
MAX_CONTROL_BODY = 64 * 1024
LOOP_CALL_TIMEOUT_SECONDS = 5.0
BACKLOG = 128


def _json(status: int, obj: Any) -> Reply:
    return Reply(status, json.dumps(obj, indent=1).encode(), "application/json")


def _text(status: int, text: str) -> Reply:
    return Reply(status, (text + "\n").encode(), "text/plain; charset=utf-8")


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
        max_connections: int = 64,
    ) -> None:
        self.metrics, self.healthz, self.readyz, self.status = metrics, healthz, readyz, status
        self.rotate, self.reload = rotate, reload
        self.max_connections = max_connections
        self.loop: asyncio.AbstractEventLoop | None = None  # the supervision loop
        self._http_loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []
        self._control_path: Path | None = None

    async def start(self, host: str, port: int, control_socket: Path) -> None:
        """Bind both listeners (errors raise here, in the caller) and serve them."""
        self.loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = self.loop.create_future()
        http_loop = asyncio.new_event_loop()
        self._http_loop = http_loop

        def report(exc: BaseException | None) -> None:
            if not started.done():
                if exc is None:
                    started.set_result(None)
                else:
                    started.set_exception(exc)

        async def bind() -> None:
            public = ConnectionPool(self._public, self.max_connections, max_body=MAX_CONTROL_BODY)
            control = ConnectionPool(self._control, 8, max_body=MAX_CONTROL_BODY)
            self._servers.append(
                await asyncio.start_server(public.serve, host, port, backlog=BACKLOG)
            )
            self._servers.append(await self._bind_control(control, control_socket))

        def run() -> None:
            asyncio.set_event_loop(http_loop)
            try:
                http_loop.run_until_complete(bind())
            except BaseException as exc:  # handed to start()'s caller
                for server in self._servers:
                    server.close()
                http_loop.close()
                self.loop.call_soon_threadsafe(report, exc)  # type: ignore[union-attr]
                return
            self.loop.call_soon_threadsafe(report, None)  # type: ignore[union-attr]
            http_loop.run_forever()
            http_loop.run_until_complete(http_loop.shutdown_asyncgens())
            http_loop.close()

        self._thread = threading.Thread(target=run, name="tunnelkeeper-http", daemon=True)
        self._thread.start()
        try:
            await started
        except BaseException:
            # The thread has closed its loop and is ending: nothing is left for aclose().
            await asyncio.to_thread(self._thread.join, LOOP_CALL_TIMEOUT_SECONDS)
            self._http_loop = self._thread = None
            self._servers.clear()
            raise

    async def _bind_control(self, pool: ConnectionPool, path: Path) -> asyncio.Server:
        if path.is_socket():
            path.unlink()
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(pool.serve, str(path), backlog=16)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self._control_path = path
        return server

    def control_socket_missing(self) -> bool:
        """The socket file was removed (a deleted runtime_dir): `rebind_control` restores it."""
        return self._control_path is not None and not self._control_path.is_socket()

    async def rebind_control(self) -> None:
        if self._http_loop is None or self._control_path is None:
            return
        path = self._control_path
        pool = ConnectionPool(self._control, 8, max_body=MAX_CONTROL_BODY)

        async def rebind() -> None:
            old = self._servers.pop()
            old.close()
            self._servers.append(await self._bind_control(pool, path))

        fut = asyncio.run_coroutine_threadsafe(rebind(), self._http_loop)
        await asyncio.wrap_future(fut)

    async def aclose(self) -> None:
        http_loop, thread = self._http_loop, self._thread
        if http_loop is None or thread is None or not thread.is_alive() or http_loop.is_closed():
            return

        async def stop() -> None:
            for server in self._servers:
                server.close()
            # client connections still open (a Prometheus keeps one) end here, while the loop
            # runs, not in the garbage collector after it closed (a traceback in the log)
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            for server in self._servers:
                await server.wait_closed()
            http_loop.stop()

        asyncio.run_coroutine_threadsafe(stop(), http_loop)
        await asyncio.to_thread(thread.join, LOOP_CALL_TIMEOUT_SECONDS)
        self._servers.clear()

    # --- calls into the supervision loop (its state has one writer) ------------------------------

    async def _in_loop(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return fn()

        return await self._await_in_loop(call(), LOOP_CALL_TIMEOUT_SECONDS)

    async def _await_in_loop(self, coro: Awaitable[Any], limit_seconds: float | None) -> Any:
        assert self.loop is not None

        async def call() -> Any:
            return await coro

        fut = asyncio.run_coroutine_threadsafe(call(), self.loop)
        try:
            async with asyncio.timeout(limit_seconds):
                return await asyncio.wrap_future(fut)
        finally:
            fut.cancel()

    # --- handlers --------------------------------------------------------------------------------

    async def _public(self, req: Request) -> Reply:
        if req.method != "GET" and req.method != "HEAD":
            return _json(405, {"error": "control actions are only on the control socket"})
        try:
            if req.path == "/metrics":
                return Reply(200, self.metrics(), CONTENT_TYPE)
            if req.path == "/healthz":
                # plain fields: still answers (unhealthy) if the supervision loop is wedged
                ok, text = self.healthz()
                return _text(200 if ok else 503, text)
            if req.path == "/readyz":
                ok, text = await self._in_loop(self.readyz)
                return _text(200 if ok else 503, text)
            if req.path == "/status":
                return _json(200, await self._in_loop(self.status))
        except TimeoutError:
            return _text(503, "supervision loop did not answer")
        return _json(404, {"error": "not found"})

    async def _control(self, req: Request) -> Reply:
        if req.method == "GET":
            if req.path != "/status":
                return _json(404, {"error": "not found"})
            try:
                return _json(200, await self._in_loop(self.status))
            except TimeoutError:
                return _text(503, "supervision loop did not answer")
        if req.method != "POST":
            return _json(405, {"error": "method not allowed"})
        try:
            body = json.loads(req.body or b"{}")
        except (ValueError, UnicodeDecodeError, RecursionError):
            body = None
        if not isinstance(body, dict):
            return _json(400, {"error": "body must be a JSON object"})
        if req.path == "/rotate":
            tunnel, force = body.get("tunnel"), body.get("force", False)
            if (tunnel is not None and not isinstance(tunnel, str)) or not isinstance(force, bool):
                return _json(400, {"error": "tunnel must be a string, force a boolean"})
            result = await self._await_in_loop(self.rotate(tunnel, force), None)
            return _json(404 if result.get("error") else 200, result)
        if req.path == "/reload":
            return _json(200, await self._await_in_loop(self.reload(), None))
        return _json(404, {"error": "not found"})
