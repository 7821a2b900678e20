"""One edge connection's transport, on both ends: JSON messages one per line over TCP.

Real cloudflared speaks QUIC or HTTP/2 to the edge; the simulator needs only what a supervisor
can observe, so the link is the simplest framing that carries :mod:`tunnelkeeper.sim.protocol`
(``json.dumps`` never writes a raw newline). It was a WebSocket (aiohttp on both ends): the
client's import alone was ~0.2 s of cloudflared-sim's ~0.3 s start, and a leaner WebSocket
client still cost ~30 ms of imports for framing this link does not need.

Silence is watched on both ends, the way QUIC's idle timeout and aiohttp's heartbeat did:
after ``heartbeat_seconds`` without a line, a ``ping`` goes out; without any line within half
that again, the link ends as timed out. ``ping`` is answered with ``pong`` inside
:meth:`LineConn.receive`; neither reaches the caller. A line over ``max_message_bytes`` ends
the link.
"""

from __future__ import annotations

import asyncio
import contextlib

from tunnelkeeper.sim.protocol import MAX_MESSAGE_BYTES, encode

PING = encode({"type": "ping"}).encode()
PONG = encode({"type": "pong"}).encode()


class LineConn:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        heartbeat_seconds: float,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._heartbeat = heartbeat_seconds
        self.timed_out = False
        self.closed = False

    @classmethod
    async def connect(cls, host: str, port: int, *, heartbeat_seconds: float) -> LineConn:
        """Dial the edge; OSError when the dial fails."""
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_MESSAGE_BYTES + 1)
        return cls(reader, writer, heartbeat_seconds=heartbeat_seconds)

    def host(self, end: str) -> str | None:
        """The address of this end (``sockname``) or the other (``peername``)."""
        address = self._writer.get_extra_info(end)
        return str(address[0]) if isinstance(address, tuple) and address else None

    async def send(self, text: str) -> None:
        if self.closed:
            raise ConnectionError("link closed")
        self._writer.write(text.encode() + b"\n")
        await self._writer.drain()

    async def receive(self) -> str | None:
        """The next message, or None once the link has ended (closed, silent or broken)."""
        waited = self._heartbeat
        while not self.closed:
            try:
                line = await asyncio.wait_for(self._reader.readline(), waited)
            except TimeoutError:
                if waited < self._heartbeat:  # pinged, and still nothing
                    self.timed_out = True
                    break
                await self._send_quietly(PING)
                waited = self._heartbeat / 2
                continue
            except (ValueError, OSError):  # a line over the limit, a reset
                break
            if not line.endswith(b"\n"):
                break  # the peer closed (a partial last line is not a message)
            waited = self._heartbeat
            line = line[:-1]
            if line == PING:
                await self._send_quietly(PONG)
            elif line != PONG:
                return line.decode("utf-8", "replace")
        await self.close()
        return None

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._writer.close()
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)

    async def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self._writer.write(data + b"\n")
            await self._writer.drain()
