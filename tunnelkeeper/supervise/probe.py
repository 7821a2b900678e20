"""Asking a replica how it is: cloudflared's /ready (per-replica truth) and /metrics (version).

/healthcheck always says OK and ha_connections reads 1 with zero connections, so neither is
used. Bodies are hostile input: anything unexpected is a failed probe, never an exception.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass

import h11
from prometheus_client.parser import text_string_to_metric_families

MAX_BODY_BYTES = 64 * 1024
# cloudflared's /metrics is ~50 KB and build_info sorts near its top; a replica serving more
# must not make the daemon hold (and parse) megabytes every metrics interval
MAX_METRICS_CHARS = 512 * 1024
_VERSION = re.compile(r"[0-9A-Za-z.+-]{1,40}")


@dataclass(frozen=True)
class ReadyResult:
    answered: bool  # False: no HTTP answer (refused, timeout, garbage)
    ready_connections: int = 0
    connector_id: str | None = None
    error: str | None = None


def parse_ready(status: int, body: bytes) -> ReadyResult:
    """Interpret a /ready response. 200 and 503 are both answers; anything else is not."""
    if status not in (200, 503):
        return ReadyResult(False, error=f"/ready answered HTTP {status}")
    if len(body) > MAX_BODY_BYTES:
        return ReadyResult(False, error="/ready body too large")
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ReadyResult(False, error="/ready body is not JSON")
    if not isinstance(obj, dict):
        return ReadyResult(False, error="/ready body is not a JSON object")
    conns = obj.get("readyConnections")
    if not isinstance(conns, int) or isinstance(conns, bool) or not 0 <= conns <= 1000:
        return ReadyResult(False, error="/ready has no valid readyConnections")
    if status == 503 and conns > 0:
        conns = 0  # cloudflared says not ready; believe the status code
    connector = obj.get("connectorId")
    connector_id: str | None = None
    if isinstance(connector, str):
        try:
            connector_id = str(uuid.UUID(connector))
        except ValueError:
            connector_id = None
    return ReadyResult(True, conns, connector_id)


def parse_build_version(text: str) -> str | None:
    """The cloudflared version from a /metrics exposition's build_info, if present."""
    if len(text) > MAX_METRICS_CHARS:
        return None
    # only build_info's lines go to the parser: the rest is never needed
    lines = [
        line
        for line in text.splitlines()
        if line.startswith(("build_info", "# HELP build_info ", "# TYPE build_info "))
    ]
    try:
        for family in text_string_to_metric_families("\n".join(lines) + "\n"):
            if family.name != "build_info":
                continue
            for sample in family.samples:
                version = sample.labels.get("version", "")
                if _VERSION.fullmatch(version):
                    return version
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    return None


class ProbeError(Exception):
    pass


class Prober:
    """GETs against replicas' metrics servers on loopback, over kept-alive connections.

    This is the daemon's hot path (every replica, every second), so it speaks HTTP/1.1 through
    h11's state machine directly on asyncio streams: a probe costs a fraction of a general-purpose
    client's CPU, which is what lets one daemon watch a hundred replicas.
    """

    def __init__(self, timeout_seconds: float) -> None:
        self.timeout_seconds = timeout_seconds
        self._idle: dict[
            int, tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection]
        ] = {}

    async def _get(self, port: int, path: str, limit: int) -> tuple[int, bytes]:
        for attempt in (1, 2):
            kept = self._idle.pop(port, None)
            try:
                async with asyncio.timeout(self.timeout_seconds):
                    return await self._exchange(port, path, limit, kept)
            except TimeoutError as exc:  # before OSError: TimeoutError is one since 3.10
                raise ProbeError("timeout") from exc
            except (OSError, EOFError, h11.ProtocolError, ProbeError) as exc:
                if kept is not None and attempt == 1:
                    continue  # the kept-alive connection had been closed: one fresh try
                raise ProbeError(type(exc).__name__) from exc
        raise ProbeError("unreachable")

    async def _exchange(
        self,
        port: int,
        path: str,
        limit: int,
        kept: tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection] | None,
    ) -> tuple[int, bytes]:
        if kept is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            conn = h11.Connection(h11.CLIENT)
        else:
            reader, writer, conn = kept
        try:
            writer.write(
                conn.send(
                    h11.Request(
                        method="GET",
                        target=path,
                        headers=[("Host", f"127.0.0.1:{port}"), ("User-Agent", "tunnelkeeper")],
                    )
                )
            )
            writer.write(conn.send(h11.EndOfMessage()))
            status, body = 0, bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    if not data:
                        raise EOFError("connection closed")
                    conn.receive_data(data)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > limit:
                        raise ProbeError("body too large")
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise EOFError("connection closed")
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
                self._idle[port] = (reader, writer, conn)
            else:
                writer.close()
            return status, bytes(body)
        except BaseException:
            writer.close()
            raise

    async def ready(self, port: int) -> ReadyResult:
        try:
            status, body = await self._get(port, "/ready", MAX_BODY_BYTES)
        except ProbeError as exc:
            return ReadyResult(False, error=str(exc))
        return parse_ready(status, body)

    async def version(self, port: int) -> str | None:
        try:
            status, body = await self._get(port, "/metrics", MAX_METRICS_CHARS)
        except ProbeError:
            return None
        if status != 200:
            return None
        return parse_build_version(body.decode("utf-8", errors="replace"))

    def forget(self, port: int) -> None:
        kept = self._idle.pop(port, None)
        if kept is not None:
            kept[1].close()

    async def aclose(self) -> None:
        for port in list(self._idle):
            self.forget(port)
