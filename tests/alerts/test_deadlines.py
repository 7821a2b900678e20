"""Every delivery attempt ends within the sink's timeout_seconds, whatever the receiver does, and
a receiver's Retry-After cannot park a sink for longer than max_retry_after_seconds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.alerts.conftest import deliveries
from tests.alerts.receiver import Receiver, Reply
from tests.alerts.samples import fire_and_resolve
from tests.alerts.test_delivery import counted, webhook
from tests.waiting import await_until
from tunnelkeeper.metrics import Metrics


class Trickler:
    """A receiver that reads the request, then sends its response a byte every ``gap`` s."""

    def __init__(self, gap: float) -> None:
        self.gap = gap
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            await reader.readuntil(b"\r\n\r\n")
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(self.gap)
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"


@pytest.fixture
async def trickler() -> AsyncIterator[Trickler]:
    t = Trickler(gap=1.0)
    t.server = await asyncio.start_server(t.handle, "127.0.0.1", 0)
    yield t
    t.server.close()


async def test_a_trickling_receiver_is_cut_off_at_timeout_seconds(
    trickler: Trickler, dispatchers: Callable[..., Any], metrics: Metrics
) -> None:
    """A response trickling one byte a second (every read well within httpx's per-read timeout)
    takes ~40 s; with timeout_seconds = 2 each attempt ends after 2 s, is counted as a retry
    and says why in the outbox."""
    d = await dispatchers([webhook(trickler.url, timeout_seconds=2)])
    fired, _ = fire_and_resolve()
    d.enqueue([fired])
    # two whole attempts before one trickled response could have completed
    await counted(metrics, "hook", "retry", 2, timeout=25)
    row = d.outbox.rows()[0]
    assert row.state == "pending"
    assert row.last_error == "no complete response within timeout_seconds (2 s)"
    assert deliveries(metrics, "hook", "delivered") == 0


async def test_retry_after_is_capped_by_max_retry_after_seconds(
    receivers: Callable[..., Receiver], dispatchers: Callable[..., Any], metrics: Metrics
) -> None:
    rx = receivers()
    rx.script(Reply(429, b"come back in an hour", {"Retry-After": "3600"}))
    d = await dispatchers([webhook(rx.url)], max_retry_after_seconds=1.0)
    fired, _ = fire_and_resolve()
    d.enqueue([fired])
    await counted(metrics, "hook", "delivered", 1, timeout=20)
    first, second = rx.received()
    assert second.at - first.at >= 1.0  # Retry-After still honoured, up to the cap

    async def settled() -> bool:
        return deliveries(metrics, "hook", "retry") == 1

    await await_until(settled, what="one retry")
