"""One HTTP/1.1 request on a fresh blocking socket, for the CLI's calls to a running daemon.

The reply is parsed by llhttp (``httptools``, already the prober's parser). The standard
library's ``http.client`` would do the same job but imports ``email`` and ``ssl`` on the way,
about a third of what ``tunnelkeeper status`` may cost in all (``bench/startup.py``).
"""

from __future__ import annotations

import json
import socket
from typing import Any

import httptools

MAX_REPLY_BYTES = 64 * 1024 * 1024  # far above any status page; a reply beyond it is refused


class ReplyError(ValueError):
    """The daemon's reply was not a whole HTTP response carrying JSON."""


class _Reply:
    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.size = 0
        self.headers_done = self.framed = self.complete = False

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_REPLY_BYTES:
            raise ReplyError(f"reply larger than {MAX_REPLY_BYTES // (1024 * 1024)} MiB")
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.complete = True


def call(
    address: str | tuple[str, int],
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    timeout: float,
) -> tuple[int, Any]:
    """``method path`` to the daemon at ``address`` (a Unix socket path, or host and port);
    the status code and the JSON body. OSError when it cannot be reached or stops answering
    within ``timeout`` (per socket operation), ReplyError when the reply is broken."""
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: tunnelkeeper\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    with _connect(address, timeout) as sock:
        sock.sendall(head.encode("ascii") + b"\r\n" + data)
        reply = _Reply()
        parser = httptools.HttpResponseParser(reply)
        try:
            while not reply.complete:
                chunk = sock.recv(65536)
                if not chunk:  # the close ends a body not framed otherwise
                    reply.complete = reply.headers_done and not reply.framed
                    break
                parser.feed_data(chunk)
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # a callback's own error (too large) comes wrapped
            raise (cause if isinstance(cause, ReplyError) else ReplyError("not HTTP")) from None
    if not reply.complete:
        raise ReplyError("the reply ended early")
    try:
        return parser.get_status_code(), json.loads(b"".join(reply.body))
    except ValueError:
        raise ReplyError("the reply is not JSON") from None


def _connect(address: str | tuple[str, int], timeout: float) -> socket.socket:
    if isinstance(address, tuple):
        return socket.create_connection(address, timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock
