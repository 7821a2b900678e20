"""cloudflared-sim's metrics server: its routes served over HTTP/1.1 with keep-alive, httptools
(llhttp, the daemon's probe parser too) parsing the requests, on the listener
:mod:`~tunnelkeeper.sim.cfmetrics` opened.

GET and HEAD on ``/ready``, ``/healthcheck``, ``/metrics``, ``/diag/tunnel``, ``/quicktunnel``
and ``/debug/pprof/cmdline``; anything else is Go's ``404 page not found``. A request that does
not parse gets Go's ``400 Bad Request`` and the connection is closed. aiohttp's server did this
before; its import was most of the simulator's start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from http import HTTPStatus
from typing import Any

import httptools

from tunnelkeeper.sim.cfmetrics import TunnelState, diag_tunnel, ready_body, render_metrics

TEXT = "text/plain; charset=utf-8"
JSON = "application/json; charset=utf-8"

Answer = tuple[int, str, bytes, str]  # status, content type, body, extra header lines


def answer(s: TunnelState, path: str) -> Answer:
    """What a GET of path returns."""
    if path == "/ready":
        return _json(*ready_body(s))
    if path == "/healthcheck":
        return 200, TEXT, b"OK\n", ""
    if path == "/metrics":
        s.scrapes["200"] = s.scrapes.get("200", 0) + 1
        return 200, TEXT, render_metrics(s).encode(), "X-Content-Type-Options: nosniff\r\n"
    if path == "/diag/tunnel":
        return _json(200, diag_tunnel(s))
    if path == "/quicktunnel":
        return _json(200, {"hostname": ""})
    if path == "/debug/pprof/cmdline":
        return 403, TEXT, b"Forbidden\n", ""
    return 404, TEXT, b"404 page not found\n", ""


def _json(status: int, body: dict[str, Any]) -> Answer:
    return status, JSON, json.dumps(body, separators=(",", ":")).encode() + b"\n", ""


def response(reply: Answer, *, head: bool, close: bool) -> bytes:
    status, content_type, body, extra = reply
    if close:
        extra += "Connection: close\r\n"
    lines = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}\r\n"
    )
    return lines.encode() + (b"" if head else body)


class _Conn(asyncio.Protocol):
    """One client connection; httptools calls the ``on_*`` methods while parsing."""

    def __init__(self, server: MetricsServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server.conns.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._server.conns.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:  # also an Upgrade request, which Go would refuse
            self._write(response((400, TEXT, b"400 Bad Request", ""), head=False, close=True))
            self._close()

    def on_message_begin(self) -> None:
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        method = self._parser.get_method()
        path = self._url.decode("ascii", "replace").partition("?")[0]
        reply = answer(self._server.state, path if method in (b"GET", b"HEAD") else "")
        keep = self._parser.should_keep_alive()
        self._write(response(reply, head=method == b"HEAD", close=not keep))
        if not keep:
            self._close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class MetricsServer:
    def __init__(self, state: TunnelState, sock: socket.socket) -> None:
        self.state = state
        self._sock = sock
        self._server: asyncio.Server | None = None
        self.conns: set[asyncio.Transport] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), sock=self._sock)

    async def aclose(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for transport in list(self.conns):
            transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self._server = None
