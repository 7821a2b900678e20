"""Bounded HTTP/1.1 connections for the daemon's listeners (h11 does the parsing).

What one outside client can hold is bounded: a connection slot (``max_connections``; at the cap
the longest-idle connection is closed to make room, and if every connection is busy the new
one gets a 503 and is closed), the time to deliver a whole request (``REQUEST_SECONDS``: a
client trickling bytes is cut off), keep-alive idle time, header size and body size. Handler
errors become a 500 and never end the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from tunnelkeeper.structs import Struct

if TYPE_CHECKING:
    import h11

REQUEST_SECONDS = 10.0  # from a request's first byte (or the connection) to its last
IDLE_SECONDS = 60.0  # keep-alive between requests (Prometheus scrapes every 15 s or so)
MAX_HEADER_BYTES = 16 * 1024
READ_CHUNK = 64 * 1024

log = structlog.get_logger("tunnelkeeper.web")


def load_parser() -> None:
    """Import h11 once the daemon's replicas are up (not before they spawn: its import is
    ~10 ms of start-up), and before any request needs it."""
    import h11  # noqa: F401


class Request(Struct, frozen=True):
    method: str
    path: str
    body: bytes


class Reply(Struct, frozen=True):
    status: int
    body: bytes
    content_type: str


Handler = Callable[[Request], Awaitable[Reply]]


class _Conn:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.busy = False
        self.idle_since = time.monotonic()


class ConnectionPool:
    def __init__(self, handler: Handler, max_connections: int, *, max_body: int = 0) -> None:
        self.handler = handler
        self.max_connections = max(1, max_connections)
        self.max_body = max_body
        self.conns: set[_Conn] = set()
        self.refused = 0
        self.evicted = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        try:
            if len(self.conns) >= self.max_connections and not self._evict_idle():
                self.refused += 1
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
                return
            self.conns.add(conn)
            await self._serve(conn, reader)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or was too slow: nothing to report
        except Exception:  # a bug must not end the listener, nor log a raw traceback
            log.error("http_connection_failed", exc_info=True)
        finally:
            self.conns.discard(conn)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _evict_idle(self) -> bool:
        idle = [c for c in self.conns if not c.busy]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.idle_since)
        self.conns.discard(oldest)
        oldest.writer.close()
        self.evicted += 1
        return True

    async def _serve(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        import h11  # load_parser() has loaded it

        h = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        while True:
            # idle until a request starts, then REQUEST_SECONDS for the whole of it
            request, body = None, bytearray()
            deadline_s = IDLE_SECONDS
            async with asyncio.timeout(None) as deadline:
                deadline.reschedule(asyncio.get_running_loop().time() + deadline_s)
                while True:
                    try:
                        event = h.next_event()
                    except h11.RemoteProtocolError:
                        await self._reply(h, conn, Reply(400, b"bad request\n", "text/plain"))
                        return
                    if event is h11.NEED_DATA:
                        data = await reader.read(READ_CHUNK)
                        if not conn.busy:
                            conn.busy = True
                            deadline.reschedule(asyncio.get_running_loop().time() + REQUEST_SECONDS)
                        h.receive_data(data)
                        continue
                    if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                        return
                    if isinstance(event, h11.Request):
                        request = event
                        conn.busy = True
                    elif isinstance(event, h11.Data):
                        body += event.data
                        if len(body) > self.max_body:
                            await self._reply(
                                h, conn, Reply(413, b"body too large\n", "text/plain")
                            )
                            return
                    elif isinstance(event, h11.EndOfMessage):
                        break
            assert request is not None
            target = request.target.decode("ascii", "replace").split("?", 1)[0]
            req = Request(request.method.decode("ascii", "replace"), target, bytes(body))
            try:
                reply = await self.handler(req)
            except Exception:
                log.error("http_handler_failed", path=target, exc_info=True)
                reply = Reply(500, b"internal error\n", "text/plain")
            if req.method == "HEAD":
                reply = Reply(reply.status, b"", reply.content_type)
            await self._reply(h, conn, reply)
            if h.our_state is not h11.DONE or h.their_state is not h11.DONE:
                return
            h.start_next_cycle()
            conn.busy = False
            conn.idle_since = time.monotonic()

    async def _reply(self, h: h11.Connection, conn: _Conn, reply: Reply) -> None:
        import h11

        headers = [
            ("Content-Type", reply.content_type),
            ("Content-Length", str(len(reply.body))),
            ("Server", "tunnelkeeper"),
            ("Date", http_date(time.time())),  # RFC 9110: servers with a clock
        ]
        try:
            data = h.send(h11.Response(status_code=reply.status, headers=headers))
            data = (data or b"") + (h.send(h11.Data(data=reply.body)) or b"")
            data += h.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return
        conn.writer.write(data)
        async with asyncio.timeout(REQUEST_SECONDS):
            await conn.writer.drain()


# Descriptors the daemon needs for its own work, so outside connections can never starve it:
# per replica a pidfd, its log file, its probe socket and a spare (twice, for surge), plus a
# reserve for the outbox, ledger, token sources, API clients and psutil.
FDS_PER_REPLICA = 4
FD_RESERVE = 128
MAX_CONNECTIONS = 64


def connection_cap(nofile: int, replicas: int) -> int:
    """How many client connections the listener may hold at once, leaving the rest for
    supervision. Never below 4: /metrics and /healthz must stay reachable."""
    spare = nofile - 2 * FDS_PER_REPLICA * replicas - FD_RESERVE
    return max(4, min(MAX_CONNECTIONS, spare // 2))


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(timestamp: float) -> str:
    """RFC 9110's IMF-fixdate, in English whatever the locale (email.utils.formatdate's
    output, without importing the email package)."""
    t = time.gmtime(timestamp)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )
