"""cloudflared-sim's metrics server: its routes served over HTTP/1.1 with keep-alive, h11 doing
the protocol, on the listener :mod:`~tunnelkeeper.sim.cfmetrics` opened.

GET and HEAD on ``/ready``, ``/healthcheck``, ``/metrics``, ``/diag/tunnel``, ``/quicktunnel``
and ``/debug/pprof/cmdline``; anything else is Go's ``404 page not found``. A request h11
cannot parse gets Go's ``400 Bad Request`` and the connection is closed. aiohttp's server did
this before; its import was most of the simulator's start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from http import HTTPStatus
from typing import Any

import h11

from tunnelkeeper.sim.cfmetrics import TunnelState, diag_tunnel, ready_body, render_metrics

READ_CHUNK = 64 * 1024
MAX_HEADER_BYTES = 1 << 20  # Go's http.DefaultMaxHeaderBytes
TEXT = b"text/plain; charset=utf-8"
JSON = b"application/json; charset=utf-8"

Answer = tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]


def answer(s: TunnelState, path: str) -> Answer:
    """(status, content type, body, extra headers) for a GET of path."""
    if path == "/ready":
        return _json(*ready_body(s))
    if path == "/healthcheck":
        return 200, TEXT, b"OK\n", []
    if path == "/metrics":
        s.scrapes["200"] = s.scrapes.get("200", 0) + 1
        return 200, TEXT, render_metrics(s).encode(), [(b"x-content-type-options", b"nosniff")]
    if path == "/diag/tunnel":
        return _json(200, diag_tunnel(s))
    if path == "/quicktunnel":
        return _json(200, {"hostname": ""})
    if path == "/debug/pprof/cmdline":
        return 403, TEXT, b"Forbidden\n", []
    return 404, TEXT, b"404 page not found\n", []


def _json(status: int, body: dict[str, Any]) -> Answer:
    return status, JSON, json.dumps(body, separators=(",", ":")).encode() + b"\n", []


class MetricsServer:
    def __init__(self, state: TunnelState, sock: socket.socket) -> None:
        self._state = state
        self._sock = sock
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, sock=self._sock)

    async def aclose(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        request: h11.Request | None = None
        try:
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError:
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        self._send(writer, conn, b"GET", (400, TEXT, b"400 Bad Request", []))
                    break
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(READ_CHUNK))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.EndOfMessage) and request is not None:
                    path = request.target.decode("ascii", "replace").partition("?")[0]
                    known = request.method in (b"GET", b"HEAD")
                    reply = answer(self._state, path if known else "")
                    self._send(writer, conn, request.method, reply)
                    await writer.drain()
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        break
                    conn.start_next_cycle()
                    request = None
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    break
        except (OSError, h11.LocalProtocolError):
            pass  # the client went away
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    def _send(
        writer: asyncio.StreamWriter, conn: h11.Connection, method: bytes, reply: Answer
    ) -> None:
        status, content_type, body, extra = reply
        headers = [
            (b"content-type", content_type),
            (b"date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()).encode()),
            (b"content-length", str(len(body)).encode()),
            *extra,
        ]
        reason = HTTPStatus(status).phrase.encode()
        writer.write(conn.send(h11.Response(status_code=status, headers=headers, reason=reason)))
        if method != b"HEAD":
            writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
