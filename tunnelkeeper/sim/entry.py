"""The public HTTP entry: ``Host: NAME`` → one of that tunnel's connectors → its origin.

Like Cloudflare, a request that never reached an origin (connection gone before
sending, or a draining connector refusing it) is retried on another connector; a
request lost after it was sent is a 502, and a tunnel without any live
connection answers 502 "error code: 1033".
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import uuid

from aiohttp import web
from multidict import CIMultiDict

from tunnelkeeper.sim.edge import Edge
from tunnelkeeper.sim.link import EdgeLink, LostInFlight, NotDelivered, OriginFailed, OriginReply
from tunnelkeeper.sim.protocol import HOP_BY_HOP, MAX_MESSAGE_BYTES, forwardable
from tunnelkeeper.sim.state import Account, Tunnel

log = logging.getLogger("tunnelkeeper.sim")

# Base64 in a JSON message must fit the protocol's message limit.
MAX_BODY_BYTES = (MAX_MESSAGE_BYTES // 4) * 3 - 64 * 1024
PROXY_TIMEOUT_SECONDS = 100.0  # Cloudflare's origin response timeout → 524
_PORT = re.compile(r":\d*$")
# The connector is outside input: only well-formed headers go back to the client.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


def host_name(host: str) -> str:
    """The tunnel name a Host header asks for (port ignored, case-insensitive)."""
    return _PORT.sub("", host.strip()).lower()


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, headers={"cf-ray": uuid.uuid4().hex[:16]})


class Entry:
    def __init__(
        self,
        account: Account,
        edge: Edge,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        proxy_timeout_seconds: float = PROXY_TIMEOUT_SECONDS,
    ) -> None:
        self.account = account
        self.edge = edge
        self.max_body_bytes = max_body_bytes
        self.proxy_timeout_seconds = proxy_timeout_seconds
        self._turn: dict[str, int] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def _pick(self, tunnel_id: str, links: list[EdgeLink]) -> EdgeLink:
        """Round-robin over connectors, then any of the chosen connector's connections."""
        connectors = sorted({link.connector_id for link in links})
        turn = self._turn.get(tunnel_id, 0)
        self._turn[tunnel_id] = turn + 1
        chosen = connectors[turn % len(connectors)]
        return random.choice([link for link in links if link.connector_id == chosen])

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = host_name(request.host)
        tunnel = self.account.active_by_name(name) if name else None
        if tunnel is None:
            shown = name[:100] or "(none)"
            return _text(404, f"No tunnel is routed for host {shown!r} on this simulator.\n")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _text(413, f"error code: 413\nRequest body larger than {self.max_body_bytes}\n")
        headers = forwardable(list(request.headers.items()))
        peer = request.remote or "127.0.0.1"
        headers += [
            ["X-Forwarded-Host", name],
            ["X-Forwarded-For", peer],
            ["X-Forwarded-Proto", request.scheme],
            ["Cf-Connecting-Ip", peer],
        ]
        return await self._route(tunnel, request.method, request.raw_path, headers, body)

    async def _route(
        self, tunnel: Tunnel, method: str, path: str, headers: list[list[str]], body: bytes
    ) -> web.Response:
        skip_links: set[str] = set()
        skip_connectors: set[str] = set()
        while True:
            links = [
                link
                for link in self.edge.routable(tunnel.id)
                if link.connection_id not in skip_links and link.connector_id not in skip_connectors
            ]
            if not links:
                return _text(
                    502,
                    f"error code: 1033\nCloudflare Tunnel error: tunnel {tunnel.name!r} "
                    "has no connector able to serve this request.\n",
                )
            link = self._pick(tunnel.id, links)
            try:
                async with asyncio.timeout(self.proxy_timeout_seconds):
                    reply = await link.forward(method, path, headers, body)
            except NotDelivered as exc:
                skip_links.add(link.connection_id)
                if exc.is_draining:
                    skip_connectors.add(link.connector_id)
                continue
            except LostInFlight:
                log.info("request_lost tunnel=%s connector=%s", tunnel.name, link.connector_id)
                return _text(502, "error code: 502\nThe tunnel connection failed mid-request.\n")
            except OriginFailed as exc:
                log.info(
                    "origin_failed tunnel=%s connector=%s reason=%s",
                    tunnel.name,
                    link.connector_id,
                    exc,
                )
                return _text(502, "error code: 502\nBad gateway: the origin did not answer.\n")
            except TimeoutError:
                return _text(524, "error code: 524\nThe origin did not answer in time.\n")
            self._count(tunnel, link)
            return self._response(reply)

    def _count(self, tunnel: Tunnel, link: EdgeLink) -> None:
        connector = tunnel.connectors.get(link.connector_id)
        if connector is not None:
            connector.requests_served += 1

    @staticmethod
    def _response(reply: OriginReply) -> web.Response:
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v)
            for k, v in reply.headers
            if k.lower() not in HOP_BY_HOP and _HEADER_NAME.match(k) and not _BAD_VALUE.search(v)
        )
        headers["cf-ray"] = uuid.uuid4().hex[:16]
        return web.Response(status=reply.status, headers=headers, body=reply.body)
