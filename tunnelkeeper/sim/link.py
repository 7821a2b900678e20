"""One registered edge connection and the requests in flight on it.

A request's fate is one of: an OriginReply, NotDelivered (never reached an
origin: safe to retry elsewhere), LostInFlight (sent, then the connection
failed) or OriginFailed (the connector says the origin failed).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from tunnelkeeper.sim.lineconn import LineConn
from tunnelkeeper.sim.protocol import (
    ProtocolError,
    body_text,
    encode,
    field_body,
    field_headers,
    field_int,
)
from tunnelkeeper.sim.state import Connection


class NotDelivered(Exception):
    """The request never reached the origin (not sent, or refused while draining): retry."""

    def __init__(self, reason: str, *, is_draining: bool = False) -> None:
        super().__init__(reason)
        self.is_draining = is_draining


class LostInFlight(Exception):
    """The connection failed after the request was sent: the outcome is unknown."""


class OriginFailed(Exception):
    """The connector reported that the origin failed, or answered nonsense."""


@dataclass(frozen=True)
class OriginReply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class EdgeLink:
    """One registered connection and the requests in flight on it."""

    def __init__(self, line: LineConn, conn: Connection) -> None:
        self.line = line
        self.connection_id = conn.id
        self.tunnel_id = conn.tunnel_id
        self.connector_id = conn.connector_id
        self.conn_index = conn.conn_index
        self.is_closed = False
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 1
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.line.send(encode(message))

    async def forward(
        self, method: str, path: str, headers: list[list[str]], body: bytes
    ) -> OriginReply:
        if self.is_closed:
            raise NotDelivered("connection closed")
        rid = self._next_id
        self._next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            message = {
                "type": "request",
                "id": rid,
                "method": method,
                "path": path,
                "headers": headers,
                "body": body_text(body),
            }
            try:
                await self.send(message)
            except (ConnectionError, RuntimeError) as exc:
                raise NotDelivered("connection closed") from exc
            reply = await fut
        finally:
            self._pending.pop(rid, None)
        kind = reply["type"]
        if kind == "refused":
            raise NotDelivered("connector is draining", is_draining=True)
        if kind == "origin_error":
            raise OriginFailed("origin unreachable")
        try:
            status = field_int(reply, "status")
            reply_headers = field_headers(reply)
            reply_body = field_body(reply)
        except ProtocolError as exc:
            raise OriginFailed(f"malformed response: {exc}") from None
        if not 200 <= status <= 599:
            raise OriginFailed("malformed response: bad status")
        return OriginReply(status, reply_headers, reply_body)

    def resolve(self, message: dict[str, Any]) -> None:
        fut = self._pending.get(field_int(message, "id"))
        if fut is not None and not fut.done():
            fut.set_result(message)

    def fail_all(self) -> None:
        self.is_closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(LostInFlight())

    async def close(self) -> None:
        self.is_closed = True
        await self.line.close()
