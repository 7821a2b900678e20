"""Asking a replica how it is: cloudflared's /ready (per-replica truth) and /metrics (version,
when its start-up line was not seen: see :func:`version_from_line`).

/healthcheck always says OK and ha_connections reads 1 with zero connections, so neither is
used. Bodies are hostile input: anything unexpected is a failed probe, never an exception.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import uuid
from collections.abc import Callable

from tunnelkeeper.structs import Struct
from tunnelkeeper.supervise.probewire import Wire, WireError

MAX_BODY_BYTES = 64 * 1024
# cloudflared's /metrics is ~50 KB and build_info sorts near its top; a replica serving more
# must not make the daemon hold (and parse) megabytes every metrics interval
MAX_METRICS_CHARS = 512 * 1024
_VERSION = re.compile(r"[0-9A-Za-z.+-]{1,40}")
# cloudflared's second start-up line: "Version 2026.8.2 (Checksum <sha256 of its binary>)"
_VERSION_LINE = re.compile(r"Version ([0-9A-Za-z.+-]{1,40}) \(Checksum [0-9a-f]{64}\)")


def version_from_line(message: str) -> str | None:
    """The version a replica logs as it starts, from the message of one of its log lines.
    Read from there, the version costs nothing: no /metrics request, and no Prometheus parser
    (prometheus_client's package, ~3 MB resident) in the daemon."""
    if not message.startswith("Version "):
        return None
    match = _VERSION_LINE.fullmatch(message)
    return match[1] if match else None


class ReadyResult(Struct, frozen=True):
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
    # imported here: only a replica whose start-up line was not seen (adopted after a daemon
    # restart, or its start buried in a log flood) needs the parser
    from prometheus_client.parser import text_string_to_metric_families

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
    """GETs against replicas' metrics servers on loopback, over kept-alive connections (see
    :mod:`~tunnelkeeper.supervise.probewire` for why it costs what it does)."""

    def __init__(self, timeout_seconds: float) -> None:
        self.timeout_seconds = timeout_seconds
        self._wire = Wire()
        self._last_ready: dict[int, tuple[int, bytes, ReadyResult]] = {}

    async def _get(self, port: int, path: str, limit: int) -> tuple[int, bytes]:
        for attempt in (1, 2):
            try:
                return await self._wire.get(port, path, limit, self.timeout_seconds)
            except WireError as exc:
                if exc.stale and attempt == 1:
                    continue  # the kept-alive connection had been closed: one fresh try
                raise ProbeError(str(exc)) from exc
        raise ProbeError("unreachable")

    async def ready(self, port: int) -> ReadyResult:
        try:
            status, body = await self._get(port, "/ready", MAX_BODY_BYTES)
        except ProbeError as exc:
            return ReadyResult(False, error=str(exc))
        return self._ready_result(port, status, body)

    def ask_ready(self, port: int, done: Callable[[ReadyResult], None]) -> None:
        """:meth:`ready` for a caller that awaits nothing: ``done`` is called with the result
        from the wire's callback (the tunnel's beat probes its replicas this way)."""
        self._ask(port, done, retry=True)

    def _ask(self, port: int, done: Callable[[ReadyResult], None], *, retry: bool) -> None:
        wire = self._wire.get(port, "/ready", MAX_BODY_BYTES, self.timeout_seconds)
        wire.add_done_callback(functools.partial(self._asked, port, done, retry))

    def _asked(
        self,
        port: int,
        done: Callable[[ReadyResult], None],
        retry: bool,
        wire: asyncio.Future[tuple[int, bytes]],
    ) -> None:
        if wire.cancelled():
            done(ReadyResult(False, error="cancelled"))
            return
        exc = wire.exception()
        if isinstance(exc, WireError):
            if exc.stale and retry:
                self._ask(port, done, retry=False)  # the kept-alive connection had been closed
            else:
                done(ReadyResult(False, error=str(exc)))
            return
        if exc is not None:
            raise exc
        done(self._ready_result(port, *wire.result()))

    def _ready_result(self, port: int, status: int, body: bytes) -> ReadyResult:
        last = self._last_ready.get(port)
        if last is not None and last[0] == status and last[1] == body:
            return last[2]  # the same answer as last time (the common case): not parsed again
        result = parse_ready(status, body)
        self._last_ready[port] = (status, body, result)
        return result

    async def version(self, port: int) -> str | None:
        try:
            status, body = await self._get(port, "/metrics", MAX_METRICS_CHARS)
        except ProbeError:
            return None
        if status != 200:
            return None
        return parse_build_version(body.decode("utf-8", errors="replace"))

    def forget(self, port: int) -> None:
        self._wire.forget(port)
        self._last_ready.pop(port, None)

    async def aclose(self) -> None:
        self._wire.close()
