"""cloudflared-sim's HA connections to the simulated edge (requests go to cfproxy).

Each connection index runs one serve loop (cloudflared's ServeTunnelLoop): dial the edge
(:mod:`~tunnelkeeper.sim.lineconn`), register, serve requests until the connection drops,
then retry. ``cloudflared_tunnel_ha_connections`` counts serve loops in progress, so, as in
cloudflared, it stays non-zero while zero connections are registered and the loop is
retrying.

Retry policy, as cloudflared's:

* before the process's first successful registration, a dial failure (closed port, handshake
  timeout) is retried at once, which floods the log like cloudflared with a static ``--edge``;
  the loop still yields to the event loop every iteration so signals and /ready keep working;
* otherwise a failed attempt waits a jittered exponential backoff: up to 2 s, 4 s, ... capped
  at 2^retries s (``Retrying connection in up to 4s``), reset by a successful registration.

Connection 0 registers first; connections 1..N-1 then start 1 s apart. On drain every live
connection sends ``unregister`` and answers new requests with ``refused``.

Over 300 lines because one serve loop's life, from dial through register and serve to drain,
reads best in one place; the full-speed dial loop already lives in sim/flood.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from dataclasses import dataclass, field
from typing import Any

from tunnelkeeper.sim import protocol
from tunnelkeeper.sim.cflog import CfLogger, go_duration
from tunnelkeeper.sim.cfmetrics import Connection, TunnelState
from tunnelkeeper.sim.cfproxy import OriginProxy
from tunnelkeeper.sim.flood import can_flood, flood_until_reachable
from tunnelkeeper.sim.lineconn import LineConn

RPC_NAME = "registerConnection"
REGISTER_TIMEOUT_SECONDS = 5.0
REGISTRATION_INTERVAL_SECONDS = 1.0
HEARTBEAT_SECONDS = 5.0
FEATURES = ("serialized_headers", "support_datagram_v2", "support_quic_eof", "management_logs")


class AttemptFailed(Exception):
    """One serve attempt ended; str() is the error cloudflared would log."""

    def __init__(self, text: str, *, is_dial: bool = False, was_registered: bool = False) -> None:
        super().__init__(text)
        self.is_dial = is_dial
        self.was_registered = was_registered


@dataclass(frozen=True)
class ConnectorConfig:
    edges: tuple[str, ...]
    token_text: str = field(repr=False)
    ha_connections: int = 4
    retries: int = 5
    label: str = ""
    protocol: str = "quic"
    version: str = "2026.8.2"
    never_connect: bool = False
    register_timeout_seconds: float = REGISTER_TIMEOUT_SECONDS


@dataclass
class _Link:
    index: int
    line: LineConn
    origin_url: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # set when the edge confirms "unregister": it sends no request on this link after that
    unregistered: asyncio.Event = field(default_factory=asyncio.Event)
    unregister_sent: bool = False


class Backoff:
    """Jittered exponential backoff: up to base*2, base*4, ... capped at base*2^max_retries."""

    def __init__(self, max_retries: int, base_seconds: float = 1.0) -> None:
        self.max_retries = max(0, max_retries)
        self.base_seconds = base_seconds
        self.retries = 0

    def next_max_seconds(self) -> float:
        if self.retries < self.max_retries:
            self.retries += 1
        return self.base_seconds * (1 << self.retries)

    def reset(self) -> None:
        self.retries = 0


class Connector:
    def __init__(
        self, cfg: ConnectorConfig, state: TunnelState, log: CfLogger, on_first_registered: Any
    ) -> None:
        self.cfg = cfg
        self.state = state
        self.log = log
        self._on_first_registered = on_first_registered
        self.is_draining = False
        self._ever_registered = asyncio.Event()
        self._links: dict[int, _Link] = {}
        self._loops: set[asyncio.Task[None]] = set()
        self.proxy = OriginProxy(state)

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Start connection 0, then 1..N-1 one second apart once 0 has registered."""
        self._start_loop(0)
        await self._ever_registered.wait()
        self.proxy.warm_up(REGISTRATION_INTERVAL_SECONDS)
        for index in range(1, self.cfg.ha_connections):
            await asyncio.sleep(REGISTRATION_INTERVAL_SECONDS)
            if self.is_draining:
                return
            self._start_loop(index)

    def _start_loop(self, index: int) -> None:
        task = asyncio.create_task(self._serve_loop(index))
        self._loops.add(task)
        task.add_done_callback(self._loops.discard)

    async def drain(self, grace_seconds: float) -> None:
        """Unregister every connection, refuse new requests, wait for in-flight ones.

        The edge may have sent requests before it processed "unregister"; they arrive before
        its confirmation (one ordered stream per link), so once every link is confirmed no
        request can still be on its way, and waiting for the in-flight ones is enough.
        """
        self.is_draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        confirm_by = loop.time() + min(grace_seconds, 5.0)
        # A connection still registering when the drain began registers afterwards and is
        # unregistered then (see _registered): keep going until every link is confirmed, or
        # the edge could send a request on a link this process is about to close.
        while (links := list(self._links.values())) and loop.time() < confirm_by:
            for link in links:
                await self._unregister(link)
            pending = [
                asyncio.ensure_future(link.unregistered.wait())
                for link in links
                if not link.unregistered.is_set()
            ]
            if not pending:
                if all(link.unregistered.is_set() for link in self._links.values()):
                    break
                continue
            _, not_done = await asyncio.wait(pending, timeout=max(0.0, confirm_by - loop.time()))
            for fut in not_done:
                fut.cancel()
        await self.proxy.wait_idle(max(0.0, deadline - loop.time()))

    async def _unregister(self, link: _Link) -> None:
        if not link.unregister_sent:
            link.unregister_sent = True
            await self._send(link, {"type": "unregister"})

    async def aclose(self) -> None:
        self.is_draining = True
        tasks = list(self._loops)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.proxy.aclose()

    # -- one connection index ----------------------------------------------------------

    async def _serve_loop(self, index: int) -> None:
        edge = self.cfg.edges[index % len(self.cfg.edges)]
        ip = edge.rpartition(":")[0].strip("[]")
        backoff = Backoff(self.cfg.retries)
        self.state.ha_connections += 1
        try:
            if self.cfg.never_connect:
                await asyncio.Event().wait()
            while not self.is_draining:
                try:
                    await self._serve_once(index, edge)
                    return  # ended because we are draining
                except (AttemptFailed, OSError, RuntimeError) as raw:
                    exc = raw if isinstance(raw, AttemptFailed) else AttemptFailed(str(raw))
                    if self.is_draining:
                        return
                    self.log.error(
                        "Serve tunnel error", connIndex=index, error=str(exc), event=0, ip=ip
                    )
                    if exc.is_dial and not self._ever_registered.is_set():
                        # cloudflared's tight retry with a static edge, at its real pace
                        if "connection refused" in str(exc) and can_flood(self.log):
                            await flood_until_reachable(
                                self.log, index, edge, lambda: self.is_draining
                            )
                        else:
                            await asyncio.sleep(0)
                        continue
                    if exc.was_registered:
                        backoff.reset()
                wait_max = backoff.next_max_seconds()
                self.log.info(
                    f"Retrying connection in up to {go_duration(wait_max)}",
                    connIndex=index,
                    event=0,
                    ip=ip,
                )
                await asyncio.sleep(random.uniform(0, wait_max))
        finally:
            self.state.ha_connections -= 1

    async def _serve_once(self, index: int, edge: str) -> None:
        host, _, port = edge.rpartition(":")
        try:
            async with asyncio.timeout(self.cfg.register_timeout_seconds):
                line = await LineConn.connect(
                    host.strip("[]"),
                    int(port),
                    heartbeat_seconds=HEARTBEAT_SECONDS,  # like QUIC's idle timeout
                )
        except TimeoutError:
            raise AttemptFailed(
                "failed to dial to edge with quic: timeout: no recent network activity",
                is_dial=True,
            ) from None
        except (OSError, ValueError) as exc:
            raise AttemptFailed(
                f"failed to dial to edge with quic: {_dial_text(exc, edge)}", is_dial=True
            ) from None
        try:
            link = await self._register(index, line)
            await self._serve(link)
        finally:
            self._forget(index)
            await line.close()

    async def _register(self, index: int, line: LineConn) -> _Link:
        hello = {
            "type": "register",
            "token": self.cfg.token_text,
            "connector_id": self.state.connector_id,
            "conn_index": index,
            "version": self.cfg.version,
            "arch": "linux_amd64",
            "label": self.cfg.label,
            "features": list(FEATURES),
        }
        try:
            async with asyncio.timeout(self.cfg.register_timeout_seconds):
                await line.send(protocol.encode(hello))
                text = await line.receive()
        except TimeoutError:
            raise AttemptFailed("register tunnel: context deadline exceeded") from None
        except OSError as exc:
            raise AttemptFailed(f"register tunnel: {exc}") from None
        if text is None:
            raise AttemptFailed("register tunnel: connection closed by edge")
        try:
            reply = protocol.decode(text)
            if reply["type"] == "error":
                error = protocol.field_str(reply, "error")
            elif reply["type"] == "registered":
                return self._registered(index, line, reply)
            else:
                raise protocol.ProtocolError(f"unexpected {reply['type']!r} reply")
        except protocol.ProtocolError as exc:
            raise AttemptFailed(f"register tunnel: {exc}") from None
        key = ("server_error", RPC_NAME)
        self.state.register_fail[key] = self.state.register_fail.get(key, 0) + 1
        ip = self.cfg.edges[index % len(self.cfg.edges)].rpartition(":")[0].strip("[]")
        self.log.error(
            "Register tunnel error from server side", connIndex=index, error=error, event=0, ip=ip
        )
        raise AttemptFailed(error)

    def _registered(self, index: int, line: LineConn, reply: dict[str, Any]) -> _Link:
        conn_id = protocol.field_str(reply, "connection_id")
        location = protocol.field_str(reply, "location", "sim01")
        ip = protocol.field_str(reply, "ip", "127.0.0.1")
        origin_url = protocol.field_str(reply, "origin_url", "")
        link = _Link(index, line, origin_url)
        self._links[index] = link
        self.state.connections[index] = Connection(index, conn_id, location, ip, self.cfg.protocol)
        for key in list(self.state.server_locations):
            if key[0] == str(index) and key[1] != location:
                self.state.server_locations[key] = 0
        self.state.server_locations[(str(index), location)] = 1
        self.state.register_success[RPC_NAME] = self.state.register_success.get(RPC_NAME, 0) + 1
        self.log.info(
            "Registered tunnel connection",
            connIndex=index,
            connection=conn_id,
            event=0,
            ip=ip,
            location=location,
            protocol=self.cfg.protocol,
        )
        if not self._ever_registered.is_set():
            self._ever_registered.set()
            self._on_first_registered()
        if self.is_draining:  # registered after the drain began: leave at once
            task = asyncio.get_running_loop().create_task(self._unregister(link))
            self._loops.add(task)
            task.add_done_callback(self._loops.discard)
        return link

    def _forget(self, index: int) -> None:
        if self._links.pop(index, None) is not None:
            self.state.connections.pop(index, None)
            self.log.info("Connection terminated", connIndex=index)

    async def _serve(self, link: _Link) -> None:
        while (text := await link.line.receive()) is not None:
            try:
                message = protocol.decode(text)
            except protocol.ProtocolError as exc:
                self.log.warn(
                    "Ignoring malformed message from edge", connIndex=link.index, error=str(exc)
                )
                continue
            if message["type"] == "request":
                await self._on_request(link, message)
            elif message["type"] == "unregistered":
                link.unregistered.set()
        if not self.is_draining:
            error = (
                "timeout: no recent network activity"
                if link.line.timed_out
                else "connection closed by edge"
            )
            raise AttemptFailed(error, was_registered=True)

    async def _on_request(self, link: _Link, msg: dict[str, Any]) -> None:
        try:
            rid = protocol.field_int(msg, "id")
        except protocol.ProtocolError as exc:
            self.log.warn(
                "Ignoring malformed request from edge", connIndex=link.index, error=str(exc)
            )
            return
        if self.is_draining:
            await self._send(link, {"type": "refused", "id": rid})
            return

        async def reply(message: dict[str, Any]) -> None:
            await self._send(link, message)

        self.proxy.submit(link.origin_url, rid, msg, reply)

    async def _send(self, link: _Link, message: dict[str, Any]) -> None:
        async with link.lock:
            with contextlib.suppress(OSError, RuntimeError):
                await link.line.send(protocol.encode(message))


def _dial_text(exc: BaseException, edge: str) -> str:
    """Go's wording: dial tcp 127.0.0.1:7844: connect: connection refused."""
    os_error = getattr(exc, "os_error", None) or (exc if isinstance(exc, OSError) else None)
    if isinstance(os_error, OSError) and os_error.errno:
        text = os.strerror(os_error.errno)
        return f"dial tcp {edge}: connect: {text[:1].lower()}{text[1:]}"
    return f"dial tcp {edge}: {exc}"
