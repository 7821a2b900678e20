"""The daemon's listener when its port is taken: start() raises the bind error to its caller and
aclose() afterwards is a clean no-op (CI once caught aclose() reaching for the HTTP thread's
already-closed loop, which put a traceback in front of the user)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tunnelkeeper.service.web import DaemonWeb


async def _unused(*_: object) -> dict[str, object]:
    return {}


def _web() -> DaemonWeb:
    return DaemonWeb(
        metrics=lambda: b"",
        healthz=lambda: (True, "ok"),
        readyz=lambda: (True, "ok"),
        status=dict,
        rotate=_unused,
        reload=_unused,
    )


def test_taken_port_raises_in_start_and_aclose_is_clean(tmp_path: Path) -> None:
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", 0))
        thief.listen()
        port = thief.getsockname()[1]

        async def attempt() -> None:
            web = _web()
            with pytest.raises(OSError) as caught:
                await web.start("127.0.0.1", port, tmp_path / "control.sock")
            assert caught.value.errno == 98
            await web.aclose()

        async def many() -> None:
            # the race lived between the thread closing its loop and ending: repeat it
            for _ in range(30):
                await attempt()

        asyncio.run(many())
    assert not (tmp_path / "control.sock").exists()


def test_free_port_serves_then_closes(tmp_path: Path) -> None:
    async def go() -> None:
        web = _web()
        await web.start("127.0.0.1", 0, tmp_path / "control.sock")
        assert (tmp_path / "control.sock").is_socket()
        await web.aclose()
        await web.aclose()  # twice is harmless

    asyncio.run(go())


def test_an_open_client_connection_ends_with_the_listener_not_after_it(tmp_path: Path) -> None:
    """A scraper's idle keep-alive connection is closed while the HTTP loop still runs: the
    old code left its handler to the garbage collector, which printed 'Event loop is closed'
    tracebacks into the daemon's log at every shutdown under Prometheus."""
    import gc
    import sys

    unraisable: list[object] = []
    previous = sys.unraisablehook
    sys.unraisablehook = unraisable.append

    async def go() -> None:
        web = _web()
        await web.start("127.0.0.1", 0, tmp_path / "control.sock")
        port = web._servers[0].sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        await web.aclose()  # the client keeps its connection open
        writer.close()

    try:
        asyncio.run(go())
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert unraisable == []
