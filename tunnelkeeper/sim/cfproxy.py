"""cloudflared-sim's origin proxy: turn an edge ``request`` into an HTTP request to the origin.

One pooled aiohttp client session for all connections; many requests in flight at once.
aiohttp is imported when the first request comes, or a moment after the first registration
(``warm_up``, in a thread: the event loop keeps answering meanwhile), not at start: its import
was most of the simulator's start-up time. The outcome goes back as ``response`` or, when the
origin cannot be reached (or answers with more than 12 MiB), ``origin_error``. Fields from the
edge are validated before use.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from tunnelkeeper.sim import protocol
from tunnelkeeper.sim.cfmetrics import TunnelState

if TYPE_CHECKING:
    import aiohttp

MAX_ORIGIN_BODY_BYTES = 12 * 1024 * 1024
ORIGIN_CONNECT_TIMEOUT_SECONDS = 30.0
_METHOD = re.compile(r"^[A-Za-z]{1,16}$")

Reply = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]


class OriginProxy:
    def __init__(self, state: TunnelState) -> None:
        self.state = state
        self._session: aiohttp.ClientSession | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def warm_up(self, delay_seconds: float) -> None:
        """Import aiohttp in a thread after delay_seconds, so the first request does not wait
        for it and the import does not compete with the start-up."""
        loop = asyncio.get_running_loop()
        loop.call_later(delay_seconds, loop.run_in_executor, None, _load_aiohttp)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def submit(self, origin_url: str, rid: int, msg: dict[str, Any], reply: Reply) -> None:
        """Start proxying one request; reply(...) is called with its outcome."""
        try:
            method = protocol.field_str(msg, "method")
            path = protocol.field_str(msg, "path")
            headers = protocol.field_headers(msg)
            body = protocol.field_body(msg)
            if not _METHOD.match(method) or not path.startswith("/"):
                raise protocol.ProtocolError("bad method or path")
        except protocol.ProtocolError as exc:
            coro = reply({"type": "origin_error", "id": rid, "error": str(exc)})
        else:
            url = origin_url.rstrip("/") + path
            coro = self._proxy(url, rid, method.upper(), headers, body, reply)
        task = asyncio.create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def wait_idle(self, timeout_seconds: float) -> None:
        if self._inflight and timeout_seconds > 0:
            await asyncio.wait(set(self._inflight), timeout=timeout_seconds)

    async def aclose(self) -> None:
        tasks = list(self._inflight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None, connect=ORIGIN_CONNECT_TIMEOUT_SECONDS),
                auto_decompress=False,
            )
        return self._session

    async def _proxy(
        self,
        url: str,
        rid: int,
        method: str,
        headers: list[tuple[str, str]],
        body: bytes,
        reply: Reply,
    ) -> None:
        import aiohttp
        from yarl import URL

        s = self.state
        s.total_requests += 1
        s.concurrent_requests += 1
        try:
            async with self._client().request(
                method,
                URL(url, encoded=True),
                headers=[(k, v) for k, v in headers if k.lower() not in protocol.HOP_BY_HOP],
                data=body or None,
                allow_redirects=False,
            ) as resp:
                data = await _read_limited(resp)
                status = resp.status
                out_headers = [(str(k), v) for k, v in resp.headers.items()]
        except (aiohttp.ClientError, OSError, ValueError, TimeoutError) as exc:
            s.request_errors += 1
            text = f"Unable to reach the origin service: {exc or type(exc).__name__}"
            await reply({"type": "origin_error", "id": rid, "error": text})
            return
        finally:
            s.concurrent_requests -= 1
        s.responses_by_code[str(status)] = s.responses_by_code.get(str(status), 0) + 1
        await reply(
            {
                "type": "response",
                "id": rid,
                "status": status,
                "headers": protocol.forwardable(out_headers),
                "body": protocol.body_text(data),
            }
        )


def _load_aiohttp() -> None:
    import aiohttp  # noqa: F401


async def _read_limited(resp: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_ORIGIN_BODY_BYTES:
            raise ValueError("origin response body too large")
        chunks.append(chunk)
    return b"".join(chunks)
