"""A test client of the edge protocol (tunnelkeeper/sim/protocol.py), driven step by step.

Not a simulator of cloudflared: it lets a test register connections with any token,
send malformed messages and decide how each proxied request is answered.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from typing import Any

import aiohttp

from tunnelkeeper.sim.lineconn import LineConn

# How the fake answers a proxied request.
ANSWER = "answer"  # 200 with body "<label>"
PROXY = "proxy"  # forward to the origin_url the edge gave at registration
REFUSE = "refuse"  # {"type": "refused"} as a draining cloudflared does
ORIGIN_ERROR = "origin_error"
CLOSE = "close"  # drop the connection after receiving the request
HOLD = "hold"  # never answer


class FakeConnector:
    def __init__(
        self, edge: str, token: str, *, label: str = "fake", connector_id: str | None = None
    ) -> None:
        self.edge = edge
        self.token = token
        self.label = label
        self.connector_id = connector_id or str(uuid.uuid4())
        self.mode = ANSWER
        self.requests: list[dict[str, Any]] = []
        self.registered: dict[int, dict[str, Any]] = {}
        self._session = aiohttp.ClientSession()
        self._lines: dict[int, LineConn] = {}
        self._readers: dict[int, asyncio.Task[None]] = {}
        self.closed: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self, conn_index: int = 0, message: Any = None) -> dict[str, Any]:
        """Open one connection, send a register (or `message`), return the edge's first answer.

        A connection closed without an answer returns {"type": "closed"}.
        """
        host, _, port = self.edge.rpartition(":")
        line = await LineConn.connect(host, int(port), heartbeat_seconds=30.0)
        if message is None:
            message = {
                "type": "register",
                "token": self.token,
                "connector_id": self.connector_id,
                "conn_index": conn_index,
                "version": "2026.8.2",
                "arch": "linux_amd64",
                "label": self.label,
                "features": ["serialized_headers"],
            }
        if isinstance(message, bytes):
            await line.send(message.decode("latin-1"))
        elif isinstance(message, str):
            await line.send(message)
        else:
            await line.send(json.dumps(message))
        answer = await self._first(line)
        if answer.get("type") == "registered":
            self._lines[conn_index] = line
            self.registered[conn_index] = answer
            self._readers[conn_index] = asyncio.create_task(self._serve(conn_index, line, answer))
        else:
            await line.close()
        return answer

    async def open_all(self, count: int = 4) -> list[dict[str, Any]]:
        return [await self.open(i) for i in range(count)]

    async def open_pending(self, conn_index: int = 0) -> asyncio.Task[dict[str, Any]]:
        """Start a registration whose answer may never come (blackholed); await the task later."""
        return asyncio.create_task(self.open(conn_index))

    @staticmethod
    async def _first(line: LineConn) -> dict[str, Any]:
        text = await line.receive()
        return {"type": "closed"} if text is None else dict(json.loads(text))

    async def send_raw(self, conn_index: int, data: str) -> None:
        await self._lines[conn_index].send(data)

    async def unregister(self) -> None:
        for line in self._lines.values():
            if not line.closed:
                await line.send(json.dumps({"type": "unregister"}))

    def is_open(self, conn_index: int) -> bool:
        return conn_index in self._lines and conn_index not in self.closed

    async def _serve(self, index: int, line: LineConn, reg: dict[str, Any]) -> None:
        try:
            while (text := await line.receive()) is not None:
                req = json.loads(text)
                if req.get("type") != "request":
                    continue
                self.requests.append(req)
                task = asyncio.create_task(self._answer(index, line, req, reg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            self.closed.add(index)

    async def _answer(
        self,
        index: int,
        line: LineConn,
        req: dict[str, Any],
        reg: dict[str, Any],
    ) -> None:
        rid = req["id"]
        mode = self.mode
        reply: dict[str, Any]
        if mode == HOLD:
            return
        if mode == CLOSE:
            await line.close()
            return
        if mode == REFUSE:
            reply = {"type": "refused", "id": rid}
        elif mode == ORIGIN_ERROR:
            reply = {"type": "origin_error", "id": rid, "error": "dial tcp: connection refused"}
        elif mode == PROXY:
            reply = await self._proxy(req, reg["origin_url"])
        else:
            body = f"{self.label} conn {index}".encode()
            reply = {
                "type": "response",
                "id": rid,
                "status": 200,
                "headers": [["Content-Type", "text/plain"], ["X-Connector", self.label]],
                "body": base64.b64encode(body).decode(),
            }
        with contextlib.suppress(ConnectionError, RuntimeError):
            await line.send(json.dumps(reply))

    async def _proxy(self, req: dict[str, Any], origin_url: str) -> dict[str, Any]:
        async with self._session.request(
            req["method"],
            origin_url.rstrip("/") + req["path"],
            headers=[(k, v) for k, v in req["headers"]],
            data=base64.b64decode(req["body"]),
        ) as resp:
            body = await resp.read()
            return {
                "type": "response",
                "id": req["id"],
                "status": resp.status,
                "headers": [[k, v] for k, v in resp.headers.items()],
                "body": base64.b64encode(body).decode(),
            }

    async def close(self) -> None:
        for line in self._lines.values():
            await line.close()
        tasks = [*self._readers.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._session.close()
