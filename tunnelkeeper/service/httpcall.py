"""One HTTP/1.1 request on a fresh blocking socket, for the CLI's calls to a running daemon.

The reply is parsed by llhttp through :class:`tunnelkeeper.httpreply.HttpReply`, the prober's
parser too. The standard
library's ``http.client`` would do the same job but imports ``email`` and ``ssl`` on the way,
about a third of what ``tunnelkeeper status`` may cost in all (``bench/startup.py``).
"""

from __future__ import annotations

import json
import socket
from typing import Any

from tunnelkeeper.httpreply import HttpReply, ReplyError

MAX_REPLY_BYTES = 64 * 1024 * 1024  # far above any status page; a reply beyond it is refused


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
        reply = HttpReply(MAX_REPLY_BYTES)
        while not reply.complete:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply.feed(chunk)
    if not reply.whole_at_close():
        raise ReplyError("the reply ended early")
    try:
        return reply.status, json.loads(reply.body)
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
