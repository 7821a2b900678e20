"""The CLI's one-shot HTTP call against servers on loopback that answer well, badly or not at
all: every failure is an OSError or a ReplyError with a reason, never a hang or a traceback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunnelkeeper.service import httpcall
from tunnelkeeper.service.httpcall import ReplyError, call


class OneShotServer:
    """Servers on loopback that each read one request, record it, write a given reply and
    close."""

    def __init__(self) -> None:
        self.served: list[bytes] = []
        self._listeners: list[socket.socket] = []

    def __call__(self, reply: bytes) -> tuple[str, int]:
        listener = socket.create_server(("127.0.0.1", 0))
        self._listeners.append(listener)
        threading.Thread(target=self._answer, args=(listener, reply), daemon=True).start()
        host, port = listener.getsockname()[:2]
        return host, port

    def _answer(self, listener: socket.socket, reply: bytes) -> None:
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            self.served.append(request)
            conn.sendall(reply)

    def close(self) -> None:
        for listener in self._listeners:
            listener.close()


@pytest.fixture
def serve() -> Iterator[OneShotServer]:
    server = OneShotServer()
    yield server
    server.close()


def test_a_json_reply_framed_by_length_chunks_or_the_close(serve: OneShotServer) -> None:
    body = b'{"tunnels": [1, 2]}'
    for reply in (
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (body[:5], len(body) - 5, body[5:]),
        b"HTTP/1.0 404 Not Found\r\n\r\n%s" % body,
    ):
        code, data = call(serve(reply), "GET", "/status", timeout=5)
        assert data == {"tunnels": [1, 2]}
        assert code == (404 if reply.startswith(b"HTTP/1.0") else 200)


def test_a_post_sends_its_json_body_with_its_length(serve: OneShotServer) -> None:
    address = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    assert call(address, "POST", "/rotate", {"tunnel": "portal"}, timeout=5) == (200, {})
    request = serve.served[0]
    assert request.startswith(b"POST /rotate HTTP/1.1\r\n")
    assert b"Content-Length: 20\r\n" in request and b"Connection: close\r\n" in request


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n", "not HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}", "ended early"),
        (b"HTTP/1.1 200 OK\r\nContent-Len", "ended early"),
        (b"", "ended early"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "not JSON"),
    ],
)
def test_a_broken_reply_is_a_reply_error_naming_what_is_wrong(
    serve: OneShotServer, reply: bytes, reason: str
) -> None:
    with pytest.raises(ReplyError, match=reason):
        call(serve(reply), "GET", "/status", timeout=5)


def test_a_reply_larger_than_the_limit_is_refused(
    serve: OneShotServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpcall, "MAX_REPLY_BYTES", 1024)
    body = b"[" + b"1," * 2000 + b"1]"
    address = serve(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    with pytest.raises(ReplyError, match="larger than"):
        call(address, "GET", "/status", timeout=5)


def test_no_listener_and_a_silent_one_are_os_errors_within_the_timeout(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        address = closed.getsockname()[:2]
    with pytest.raises(ConnectionRefusedError):
        call(address, "GET", "/status", timeout=5)
    with pytest.raises(FileNotFoundError):
        call(str(tmp_path / "control.sock"), "POST", "/reload", {}, timeout=5)
    # a listener that accepts (its backlog does) and never answers
    with socket.create_server(("127.0.0.1", 0)) as silent, pytest.raises(TimeoutError):
        call(silent.getsockname()[:2], "GET", "/status", timeout=0.3)
