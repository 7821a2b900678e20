"""cloudflared-sim's side of the link to the simulated edge: a WebSocket client over asyncio
streams, wsproto doing the protocol (the handshake, framing, masking, ping and close).

aiohttp's client did this before; importing it was ~0.2 s of the simulator's ~0.3 s start, and
the simulator stands in for a Go binary that starts in milliseconds. The edge side is unchanged
(aiohttp's server).

Messages are text (the JSON of :mod:`tunnelkeeper.sim.protocol`). A message over
``max_message_bytes`` ends the link, as aiohttp's ``max_msg_size`` did. Silence is watched the
way aiohttp's ``heartbeat`` did: after ``heartbeat_seconds`` without a byte from the edge a
ping goes out, and if nothing comes back within half that, the link ends as timed out.
"""

from __future__ import annotations

import asyncio
import contextlib

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

READ_CHUNK = 64 * 1024


class HandshakeRejected(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"handshake status {status}")
        self.status = status


class WsClient:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ws: WSConnection,
        *,
        max_message_bytes: int,
        heartbeat_seconds: float,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._ws = ws
        self._max = max_message_bytes
        self._heartbeat = heartbeat_seconds
        self._inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._partial: list[str] = []
        self._partial_size = 0
        self.timed_out = False
        self.closed = False
        self._pump = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        path: str,
        *,
        max_message_bytes: int,
        heartbeat_seconds: float,
    ) -> WsClient:
        """Dial and upgrade; OSError when the dial fails, HandshakeRejected on a refusal,
        ConnectionError when the edge hangs up or speaks something else."""
        reader, writer = await asyncio.open_connection(host, port)
        ws = WSConnection(ConnectionType.CLIENT)
        try:
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            writer.write(ws.send(Request(host=authority, target=path)))
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    raise ConnectionError("connection closed by edge during the handshake")
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        return cls(
                            reader,
                            writer,
                            ws,
                            max_message_bytes=max_message_bytes,
                            heartbeat_seconds=heartbeat_seconds,
                        )
                    if isinstance(event, RejectConnection):
                        raise HandshakeRejected(event.status_code)
        except RemoteProtocolError as exc:
            writer.close()
            raise ConnectionError(f"bad handshake: {exc}") from None
        except BaseException:
            writer.close()
            raise

    async def send_text(self, text: str) -> None:
        if self.closed:
            raise ConnectionError("link closed")
        self._writer.write(self._ws.send(TextMessage(data=text)))
        await self._writer.drain()

    async def receive(self) -> str | None:
        """The next message, or None once the link has ended."""
        if self.closed and self._inbox.empty():
            return None
        return await self._inbox.get()

    async def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(LocalProtocolError, OSError, RuntimeError):
                self._writer.write(self._ws.send(CloseConnection(code=1000)))
        self._end()
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        with contextlib.suppress(OSError, RuntimeError):
            await self._writer.wait_closed()

    def _end(self) -> None:
        if not self.closed:
            self.closed = True
            self._writer.close()
            self._inbox.put_nowait(None)

    async def _read_loop(self) -> None:
        try:
            while not self.closed:
                data = await self._read_or_ping()
                if not data:
                    break
                self._ws.receive_data(data)
                if not self._take_events():
                    break
        except (OSError, RemoteProtocolError, LocalProtocolError):
            pass
        finally:
            self._end()

    async def _read_or_ping(self) -> bytes:
        try:
            return await asyncio.wait_for(self._reader.read(READ_CHUNK), self._heartbeat)
        except TimeoutError:
            pass
        self._writer.write(self._ws.send(Ping()))
        try:
            return await asyncio.wait_for(self._reader.read(READ_CHUNK), self._heartbeat / 2)
        except TimeoutError:
            self.timed_out = True
            return b""

    def _take_events(self) -> bool:
        """Handle what the edge sent; False once the link is to end."""
        for event in self._ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                data = event.data
                part = data if isinstance(data, str) else data.decode("utf-8", "replace")
                self._partial_size += len(part)
                if self._partial_size > self._max:
                    return False
                self._partial.append(part)
                if event.message_finished:
                    self._inbox.put_nowait("".join(self._partial))
                    self._partial, self._partial_size = [], 0
            elif isinstance(event, Ping):
                self._writer.write(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                with contextlib.suppress(LocalProtocolError):
                    self._writer.write(self._ws.send(event.response()))
                return False
        return True
