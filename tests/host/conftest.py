"""Fixtures for host-operations tests: a local release server, fake cloudflared artefacts."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.harness import CLOUDFLARED_SIM
from tunnelkeeper.cloudflared.install import release_arch

ARCH = release_arch()


def artefact(version: str) -> bytes:
    """A fake cloudflared release: a script that runs the simulator as that version."""
    return (
        f'#!/bin/sh\nexec env CLOUDFLARED_SIM_VERSION={version} {CLOUDFLARED_SIM} "$@"\n'
    ).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Served:
    body: bytes
    status: int = 200
    cut_after: int | None = None  # send this many bytes of the body, then close the connection
    claimed_length: int | None = None  # Content-Length to announce instead of len(body)


@dataclass
class ReleaseServer:
    """Serves files by path on 127.0.0.1, honouring ``Range: bytes=N-`` like GitHub's CDN."""

    url: str
    files: dict[str, Served] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)

    def template(self) -> str:
        return self.url + "/download/{version}/cloudflared-linux-{arch}"

    def publish(self, version: str, body: bytes, **behaviour: int | None) -> str:
        path = f"/download/{version}/cloudflared-linux-{ARCH}"
        self.files[path] = Served(body, **behaviour)  # type: ignore[arg-type]
        return path


def _handler(server: ReleaseServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            server.requests.append((self.path, rng))
            served = server.files.get(self.path)
            if served is None or served.status != 200:
                status = 404 if served is None else served.status
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body, start = served.body, 0
            m = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if m and int(m.group(1)) >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if m:
                start = int(m.group(1))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            rest = body[start:]
            self.send_header("Content-Length", str(served.claimed_length or len(rest)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if served.cut_after is not None:
                self.wfile.write(rest[: served.cut_after])
                self.wfile.flush()
                self.close_connection = True
                return
            if served.claimed_length is None:
                self.wfile.write(rest)

    return Handler


@pytest.fixture
def release_server() -> Iterator[ReleaseServer]:
    state = ReleaseServer(url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def write_config(
    workdir: Path, *, version: str, url: str, digest: str, binary_path: Path | None = None
) -> Path:
    """A config whose [cloudflared.install] pins ``version``; path lives under workdir/bin."""
    path = binary_path or workdir / "bin" / "cloudflared"
    cfg = workdir / f"tunnelkeeper-{version}.toml"
    cfg.write_text(
        "\n".join(
            [
                "[daemon]",
                f'state_dir = "{workdir / "state"}"',
                f'runtime_dir = "{workdir / "run"}"',
                "",
                "[cloudflared]",
                f'path = "{path}"',
                "",
                "[cloudflared.install]",
                f'version = "{version}"',
                f'url = "{url}"',
                f'sha256 = "{digest}"',
                "",
                "[[tunnel]]",
                'name = "portal"',
                'token = { source = "env", var = "PORTAL_TOKEN" }',
                "",
            ]
        )
    )
    return cfg
