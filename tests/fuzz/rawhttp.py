"""A loopback HTTP server for fuzzing clients: it answers each request with raw bytes chosen by
the test (any status line, headers and body, well-formed or not), then closes the connection.

It plays an outside API (Cloudflare, Vault, AWS) whose answers are hostile; it is not a fake of
our own code. ``answer`` maps a request to the bytes to send.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_REQUEST_BYTES = 1 << 20


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


def response(status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> bytes:
    """A well-formed HTTP/1.1 response (for the parts of a test that want one)."""
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers or []]
    return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", errors="surrogateescape") + body


def _read_request(conn: socket.socket) -> Request | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk or len(data) > MAX_REQUEST_BYTES:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = [*lines[0].split(" ", 2), "", ""][:3]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return Request(method, target, headers, body)


@dataclass
class RawHTTPServer:
    answer: Callable[[Request], bytes] = field(default=lambda _: response(404, b""))
    requests: list[Request] = field(default_factory=list)
    _server: socketserver.ThreadingTCPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> RawHTTPServer:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn: socket.socket = self.request
                conn.settimeout(5)
                try:
                    req = _read_request(conn)
                    if req is None:
                        return
                    outer.requests.append(req)
                    conn.sendall(outer.answer(req))
                    conn.shutdown(socket.SHUT_WR)
                except OSError:
                    return

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
