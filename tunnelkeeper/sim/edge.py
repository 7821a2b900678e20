"""The simulated edge: one TCP connection per HA connection, JSON lines on it
(:mod:`~tunnelkeeper.sim.lineconn`).

Registration checks follow Cloudflare's texts (see state.RegistrationRefused);
everything a connector sends is parsed as hostile input, and a peer that breaks
the protocol loses only its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from tunnelkeeper.sim.lineconn import LineConn
from tunnelkeeper.sim.link import EdgeLink
from tunnelkeeper.sim.protocol import (
    MAX_MESSAGE_BYTES,
    ProtocolError,
    decode,
    encode,
    field_int,
    field_str,
)
from tunnelkeeper.sim.state import HA_CONNECTIONS, Account, RegistrationRefused

log = logging.getLogger("tunnelkeeper.sim")

REGISTER_TIMEOUT_SECONDS = 10.0
HEARTBEAT_SECONDS = 10.0
MAX_LINE_BYTES = MAX_MESSAGE_BYTES + 1
MAX_FIELD_CHARS = 256
REFUSED_BY_FAULT = "Unavailable: edge is not accepting registrations (simulated fault)"


@dataclass(frozen=True)
class Registration:
    token: str
    connector_id: str
    conn_index: int
    version: str
    arch: str
    label: str
    features: list[str]


def parse_registration(msg: dict[str, Any]) -> Registration:
    if msg["type"] != "register":
        raise ProtocolError("first message must be register")
    connector_id = field_str(msg, "connector_id")
    try:
        connector_id = str(uuid.UUID(connector_id))
    except ValueError:
        raise ProtocolError("connector_id is not a UUID") from None
    conn_index = field_int(msg, "conn_index")
    if not 0 <= conn_index < HA_CONNECTIONS:
        raise ProtocolError(f"conn_index must be 0..{HA_CONNECTIONS - 1}")
    features = msg.get("features", [])
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise ProtocolError("features must be a list of strings")
    texts = {k: field_str(msg, k, "") for k in ("version", "arch", "label")}
    if any(len(v) > MAX_FIELD_CHARS for v in texts.values()) or len(features) > 64:
        raise ProtocolError("field too long")
    return Registration(
        token=field_str(msg, "token"),
        connector_id=connector_id,
        conn_index=conn_index,
        version=texts["version"] or "unknown",
        arch=texts["arch"] or "unknown",
        label=texts["label"],
        features=[f[:MAX_FIELD_CHARS] for f in features],
    )


class Edge:
    def __init__(self, account: Account) -> None:
        self.account = account
        self._links: dict[str, EdgeLink] = {}
        self._blackholed: set[LineConn] = set()

    async def listen(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._accept, host, port, limit=MAX_LINE_BYTES)

    def routable(self, tunnel_id: str) -> list[EdgeLink]:
        """Live, non-draining connections of a tunnel."""
        out = []
        for link in self._links.values():
            conn = self.account.connection(link.connection_id)
            if link.tunnel_id == tunnel_id and not link.is_closed and conn and not conn.is_draining:
                out.append(link)
        return out

    def link(self, connection_id: str) -> EdgeLink | None:
        return self._links.get(connection_id)

    async def drop(self, connection_ids: list[str]) -> None:
        links = [link for cid in connection_ids if (link := self._links.get(cid)) is not None]
        for link in links:
            link.is_closed = True
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)

    async def partition(self, connector_id: str | None) -> int:
        if connector_id is None:
            self.account.faults.partition_all = True
        else:
            self.account.faults.partitioned.add(connector_id)
        victims = [
            cid
            for cid, link in self._links.items()
            if connector_id is None or link.connector_id == connector_id
        ]
        for cid in victims:
            if (conn := self.account.disconnect(cid)) is not None:
                log.info(
                    "connection_partitioned connector=%s conn_index=%d connection=%s",
                    conn.connector_id,
                    conn.conn_index,
                    conn.id,
                )
        await self.drop(victims)
        return len(victims)

    async def heal(self) -> None:
        self.account.faults.clear()
        held = list(self._blackholed)
        await asyncio.gather(*(line.close() for line in held), return_exceptions=True)

    async def close_all(self) -> None:
        await self.drop(list(self._links))
        held = list(self._blackholed)
        await asyncio.gather(*(line.close() for line in held), return_exceptions=True)

    # --- one connection -----------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = LineConn(reader, writer, heartbeat_seconds=HEARTBEAT_SECONDS)
        try:
            await self._connect(line)
        finally:
            await line.close()

    async def _connect(self, line: LineConn) -> None:
        peer = line.host("peername") or "unknown"
        try:
            async with asyncio.timeout(REGISTER_TIMEOUT_SECONDS):
                first = await line.receive()
        except TimeoutError:
            log.warning("registration_timed_out peer=%s", peer)
            return
        if first is None:
            return
        try:
            reg = parse_registration(decode(first))
        except ProtocolError as exc:
            log.warning("registration_malformed peer=%s reason=%s", peer, exc)
            await self._refuse(line, f"Bad request: {exc}")
            return
        if self.account.faults.is_partitioned(reg.connector_id):
            log.info(
                "registration_blackholed connector=%s conn_index=%d",
                reg.connector_id,
                reg.conn_index,
            )
            await self._blackhole(line)
            return
        try:
            tunnel = self.account.authenticate(reg.token)
            if self.account.faults.is_refused(tunnel.id):
                raise RegistrationRefused(REFUSED_BY_FAULT)
        except RegistrationRefused as exc:
            log.info(
                "registration_refused connector=%s conn_index=%d error=%r",
                reg.connector_id,
                reg.conn_index,
                str(exc),
            )
            await self._refuse(line, str(exc))
            return
        conn, replaced = self.account.register(
            tunnel,
            connector_id=reg.connector_id,
            conn_index=reg.conn_index,
            version=reg.version,
            arch=reg.arch,
            label=reg.label,
            features=reg.features,
            origin_ip=peer,
        )
        link = EdgeLink(line, conn)
        self._links[conn.id] = link
        if replaced is not None:
            await self.drop([replaced])
        log.info(
            "connection_registered tunnel=%s connector=%s conn_index=%d colo=%s connection=%s",
            tunnel.name,
            conn.connector_id,
            conn.conn_index,
            conn.colo,
            conn.id,
        )
        edge_ip = line.host("sockname") or "127.0.0.1"
        try:
            await link.send(
                {
                    "type": "registered",
                    "connection_id": conn.id,
                    "location": conn.colo,
                    "ip": edge_ip,
                    "origin_url": tunnel.origin_url,
                }
            )
            await self._serve(link)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            link.fail_all()
            self._links.pop(conn.id, None)
            if self.account.disconnect(conn.id) is not None:
                log.info(
                    "connection_lost tunnel=%s connector=%s conn_index=%d connection=%s",
                    tunnel.name,
                    conn.connector_id,
                    conn.conn_index,
                    conn.id,
                )

    async def _serve(self, link: EdgeLink) -> None:
        while (text := await link.line.receive()) is not None:
            try:
                message = decode(text)
                kind = message["type"]
                if kind in ("response", "origin_error", "refused"):
                    link.resolve(message)
                elif kind == "unregister":
                    self.account.mark_draining(link.connection_id)
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await link.send({"type": "unregistered"})
                    log.info(
                        "connection_draining connector=%s conn_index=%d",
                        link.connector_id,
                        link.conn_index,
                    )
                else:
                    raise ProtocolError(f"unexpected {kind} message")
            except ProtocolError as exc:
                await self._protocol_error(link, str(exc))
                return

    async def _protocol_error(self, link: EdgeLink, reason: str) -> None:
        log.warning(
            "connection_protocol_error connector=%s conn_index=%d reason=%s",
            link.connector_id,
            link.conn_index,
            reason,
        )
        link.is_closed = True
        await link.line.close()

    async def _refuse(self, line: LineConn, error: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError, OSError):
            await line.send(encode({"type": "error", "error": error}))
        await line.close()

    async def _blackhole(self, line: LineConn) -> None:
        """A partitioned connector: accept, read, never answer, until healed or gone."""
        self._blackholed.add(line)
        try:
            while await line.receive() is not None:
                pass
        finally:
            self._blackholed.discard(line)
