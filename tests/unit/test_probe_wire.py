"""The prober's wire (raw sockets, one epoll, llhttp) against real servers on loopback: the
HTTP framings a metrics server may use, and when a connection is reused."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from tunnelkeeper.supervise.probe import Prober
from tunnelkeeper.tasks import until_beat

BODY = b'{"status":200,"readyConnections":4,"connectorId":"0b7b4f36-9f3c-4f3a-9a43-2d3b1f8d6a11"}'


SERVERS: list[asyncio.Server] = []


@pytest.fixture(autouse=True)
async def _close_servers() -> AsyncIterator[None]:
    yield
    for server in SERVERS:
        server.close()
        await server.wait_closed()
    SERVERS.clear()


async def serve(
    respond: Callable[[int], bytes], *, close_after: bool = False
) -> tuple[int, list[int]]:
    """A server answering every request on a connection with respond(n) (n: its connection
    number); returns its port and the list of connection numbers seen."""
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(len(seen) + 1)
        number = len(seen)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(respond(number))
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, OSError):
            pass
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    SERVERS.append(server)
    return int(server.sockets[0].getsockname()[1]), seen


def plain(_: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


async def test_a_kept_alive_connection_serves_every_probe() -> None:
    port, seen = await serve(plain)
    prober = Prober(timeout_seconds=2)
    try:
        for _ in range(5):
            assert (await prober.ready(port)).ready_connections == 4
    finally:
        await prober.aclose()
    assert seen == [1]


async def test_a_chunked_answer_is_read() -> None:
    def chunked(_: int) -> bytes:
        half = len(BODY) // 2
        return (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
            % (half, BODY[:half], len(BODY) - half, BODY[half:])
        )

    port, _ = await serve(chunked)
    prober = Prober(timeout_seconds=2)
    try:
        result = await prober.ready(port)
    finally:
        await prober.aclose()
    assert result.answered and result.ready_connections == 4
    assert result.connector_id == "0b7b4f36-9f3c-4f3a-9a43-2d3b1f8d6a11"


async def test_an_answer_delimited_by_closing_the_connection_is_read() -> None:
    port, seen = await serve(
        lambda _: b"HTTP/1.1 503 Service Unavailable\r\n\r\n" + BODY, close_after=True
    )
    prober = Prober(timeout_seconds=2)
    try:
        first = await prober.ready(port)
        second = await prober.ready(port)
    finally:
        await prober.aclose()
    assert first.answered and first.ready_connections == 0  # 503: not ready, whatever it says
    assert second.answered
    assert seen == [1, 2]  # a closed connection is not reused


async def test_connection_close_is_honoured_and_a_closed_idle_connection_is_retried_once() -> None:
    def closing(_: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (
            len(BODY),
            BODY,
        )

    port, seen = await serve(closing)
    prober = Prober(timeout_seconds=2)
    try:
        assert (await prober.ready(port)).answered
        assert (await prober.ready(port)).answered
    finally:
        await prober.aclose()
    assert seen == [1, 2]

    # a server that closes a kept-alive connection while it is idle: the next probe finds it
    # closed and answers from a fresh one, not a failure
    port, seen = await serve(plain, close_after=True)
    prober = Prober(timeout_seconds=2)
    try:
        results = [await prober.ready(port) for _ in range(3)]
    finally:
        await prober.aclose()
    assert all(r.answered for r in results)
    assert seen == [1, 2, 3]


async def test_probes_on_one_interval_share_beats() -> None:
    """Periodic work waits for the next multiple of its interval, whenever it last ran."""
    loop = asyncio.get_running_loop()
    for interval, phase in ((1.0, 0.0), (1.0, 0.25), (0.5, 0.0), (10.0, 0.7)):
        wait = until_beat(interval, phase)
        assert 0 < wait <= interval
        beat = (loop.time() + wait) / interval - phase
        assert abs(beat - round(beat)) < 1e-3


async def test_one_hung_replica_times_out_alone_and_later_probes_get_their_own_deadline() -> None:
    """The wire's single timer: a hung server's probe fails with "timeout" while the answering
    ones beside it are answered, and a probe sent after the timer was armed (later deadline)
    still times out on its own deadline, not never."""
    hold = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            await hold.wait()
        writer.close()

    hung_server = await asyncio.start_server(silent, "127.0.0.1", 0)
    SERVERS.append(hung_server)
    hung = int(hung_server.sockets[0].getsockname()[1])
    ports = [(await serve(plain))[0] for _ in range(3)]
    prober = Prober(timeout_seconds=0.3)
    try:
        first = asyncio.ensure_future(prober.ready(hung))
        answered = await asyncio.gather(*(prober.ready(p) for p in ports))
        assert [r.ready_connections for r in answered] == [4, 4, 4]
        assert not first.done()  # answered ones did not settle the hung one
        second = asyncio.ensure_future(prober.ready(hung))  # its own, later deadline
        results = await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert [(r.answered, r.error) for r in results] == [(False, "timeout")] * 2
        again = await asyncio.wait_for(prober.ready(ports[0]), 10)
        assert again.ready_connections == 4
    finally:
        hold.set()
        await prober.aclose()
