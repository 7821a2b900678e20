"""HTTP/1.1 GETs to replicas' metrics servers on loopback, as cheaply as the kernel allows.

The daemon asks every replica ``/ready`` every second: with a hundred replicas that is the whole
of its steady work, so its cost is what the daemon costs. Measured on the 2-core test machine
(``bench/README.md``, "Probe wire"), 100 probes a second cost 8 to 10% of a core through asyncio
streams and h11, 1.5% with h11 alone over raw sockets, and 0.2% the way this module does it:

- **Raw non-blocking sockets, one private epoll.** Every connection is registered once with an
  epoll object of our own, and that epoll's descriptor once with the event loop
  (``add_reader``). However many replicas answer at once, the event loop wakes once and
  :meth:`Wire._on_events` reads every answer in one pass: no transport, protocol, stream or
  task per connection, no ``epoll_ctl`` per request.
- **llhttp** (``httptools``, the parser under uvicorn) parses the responses
  (:class:`tunnelkeeper.httpreply.HttpReply`): a maintained C parser that costs microseconds,
  where h11's pure-Python state machine cost ~130 µs a response.
- Connections are kept alive and reused (one per replica at rest); a fresh one connects without
  blocking (a replica whose listen backlog is full must not stall the loop).
- Timeouts are the wire's: one timer for all the requests in flight (armed for the earliest
  deadline, cancelled when none is left), not an ``asyncio.timeout`` per request, whose timer
  handle, heap push and cancel were a tenth of a probe's cost.

Bodies are hostile input and bounded (``limit``); anything unexpected fails that one request
with :class:`WireError` and closes its connection, never raises elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import select
import socket

from tunnelkeeper.httpreply import HttpReply, ReplyError

_RECV_BYTES = 65536
_IN = select.EPOLLIN | select.EPOLLRDHUP
_OUT = select.EPOLLOUT


class WireError(Exception):
    """One request failed; ``stale`` when it failed on a reused connection before any byte of
    the answer came (the server had closed it while idle: worth one retry)."""

    def __init__(self, reason: str, *, stale: bool = False) -> None:
        super().__init__(reason)
        self.stale = stale


class _Conn:
    """One connection and the one request on it (HTTP/1.1 without pipelining)."""

    __slots__ = (
        "connecting",
        "deadline",
        "future",
        "port",
        "received",
        "reply",
        "request",
        "reused",
        "sock",
    )
    reply: HttpReply  # the current request's response, made by Wire.get

    def __init__(self, port: int, sock: socket.socket) -> None:
        self.port, self.sock = port, sock
        self.connecting = True
        self.future: asyncio.Future[tuple[int, bytes]] | None = None
        self.request = b""
        self.received = self.reused = False
        self.deadline = 0.0


class Wire:
    """Keeps the connections; :meth:`get` is one request, awaited by its caller."""

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._by_fd: dict[int, _Conn] = {}
        self._idle: dict[int, _Conn] = {}
        self._waiting: set[_Conn] = set()  # requests in flight
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_at = 0.0

    def get(
        self, port: int, path: str, limit: int, timeout: float
    ) -> asyncio.Future[tuple[int, bytes]]:
        """Send ``GET path`` to 127.0.0.1:port; the future gives (status, body) or raises
        :class:`WireError` (``"timeout"`` after ``timeout`` seconds). Cancelling it closes its
        connection."""
        loop = asyncio.get_running_loop()
        self._attach(loop)
        future: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        conn = self._idle.pop(port, None)
        if conn is None:
            try:
                conn = self._connect(port)
            except OSError as exc:
                future.set_exception(WireError(_name(exc)))
                return future
        else:
            conn.reused = True
        conn.future, conn.reply, conn.received = future, HttpReply(limit), False
        conn.request = (
            b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: tunnelkeeper\r\n\r\n"
            % (path.encode("ascii"), port)
        )
        future.add_done_callback(functools.partial(self._settled, conn))
        conn.deadline = loop.time() + timeout
        self._waiting.add(conn)
        if self._sweep is None or conn.deadline < self._sweep_at:
            self._arm(conn.deadline)
        if not conn.connecting:
            self._send(conn)
        return future

    def _arm(self, when: float) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
        assert self._loop is not None
        self._sweep, self._sweep_at = self._loop.call_at(when, self._expire), when

    def _expire(self) -> None:
        """The earliest deadline has come: fail what is overdue, wait for the next one."""
        self._sweep = None
        assert self._loop is not None
        now = self._loop.time()
        for conn in [c for c in self._waiting if c.deadline <= now]:
            self._fail(conn, WireError("timeout"))
        if self._waiting:
            self._arm(min(c.deadline for c in self._waiting))

    def forget(self, port: int) -> None:
        conn = self._idle.pop(port, None)
        if conn is not None:
            self._close(conn)

    def close(self) -> None:
        for conn in list(self._by_fd.values()):
            if conn.future is not None and not conn.future.done():
                conn.future.set_exception(WireError("closed"))
            self._close(conn)
        self._idle.clear()
        self._waiting.clear()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self._epoll is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll, self._loop = None, None

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop and self._epoll is not None:
            return
        if self._epoll is not None:  # a new event loop (tests): start afresh
            self.close()
        self._epoll = select.epoll()
        self._loop = loop
        loop.add_reader(self._epoll.fileno(), self._on_events)

    def _connect(self, port: int) -> _Conn:
        assert self._epoll is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(("127.0.0.1", port))
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, errno.errorcode.get(code, str(code)))
            conn = _Conn(port, sock)
            conn.connecting = code != 0
            self._epoll.register(sock.fileno(), _OUT if conn.connecting else _IN)
        except BaseException:
            sock.close()
            raise
        self._by_fd[sock.fileno()] = conn
        return conn

    def _send(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.request)
        except OSError as exc:
            self._fail(conn, WireError(_name(exc), stale=conn.reused))
            return
        if sent != len(conn.request):  # an idle connection's buffer is empty: never expected
            self._fail(conn, WireError("request not sent whole"))

    def _on_events(self) -> None:
        if self._epoll is None:
            return
        for fd, _events in self._epoll.poll(0):
            conn = self._by_fd.get(fd)
            if conn is None:
                continue
            if conn.connecting:
                self._connected(conn)
            else:
                self._readable(conn)

    def _connected(self, conn: _Conn) -> None:
        code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._fail(conn, WireError(errno.errorcode.get(code, "connect failed")))
            return
        conn.connecting = False
        assert self._epoll is not None
        self._epoll.modify(conn.sock.fileno(), _IN)
        if conn.future is not None and not conn.future.done():
            self._send(conn)

    def _readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(_RECV_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(conn, WireError(_name(exc), stale=conn.reused and not conn.received))
            return
        if conn.future is None or conn.future.done():
            self._close(conn)  # an answer nobody asked for, or a close while idle
            return
        reply = conn.reply
        if not data:
            if reply.whole_at_close():  # a body delimited by the close
                conn.future.set_result((reply.status, bytes(reply.body)))
            else:
                self._fail(conn, WireError("EOFError", stale=conn.reused and not conn.received))
            return
        conn.received = True
        try:
            reply.feed(data)
        except ReplyError as exc:
            self._fail(conn, WireError(str(exc)))
            return
        if reply.complete:
            conn.future.set_result((reply.status, bytes(reply.body)))
            if not reply.keep:
                self._close(conn)

    def _settled(self, conn: _Conn, future: asyncio.Future[tuple[int, bytes]]) -> None:
        """The request is over (answered, failed or cancelled): keep the connection for the
        next one only if it finished cleanly."""
        conn.future = None
        self._waiting.discard(conn)
        if not self._waiting and self._sweep is not None:
            self._sweep.cancel()  # nothing in flight: no wake-up for nothing
            self._sweep = None
        if conn.sock.fileno() < 0:
            return
        if future.cancelled() or future.exception() is not None or not conn.reply.complete:
            self._close(conn)
            return
        conn.reused = False
        if conn.port in self._idle:  # a second connection made for a concurrent request
            self._close(conn)
        else:
            self._idle[conn.port] = conn

    def _fail(self, conn: _Conn, exc: WireError) -> None:
        if conn.future is not None and not conn.future.done():
            conn.future.set_exception(exc)
        self._close(conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd < 0:
            return
        self._by_fd.pop(fd, None)
        if self._idle.get(conn.port) is conn:
            del self._idle[conn.port]
        if self._epoll is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)
        conn.sock.close()


def _name(exc: OSError) -> str:
    return type(exc).__name__ if exc.errno is None else errno.errorcode.get(exc.errno, str(exc))
