"""cloudflared's dial loop against a static ``--edge`` that refuses connections, at full speed.

The real 2026.8.2 binary retries without any delay and writes three JSON lines per attempt
(curve preferences, ``Unable to establish connection with Cloudflare edge``, ``Serve tunnel
error``), about 19,000 lines a second, plus now and then ``observer channel buffer is full``.
An asyncio/aiohttp attempt per line pair cannot keep that pace, so this loop dials with plain
non-blocking sockets (real attempts: each is refused by the kernel) and writes each attempt's
lines in one ``write``, yielding to the event loop every few milliseconds so signals and the
metrics server keep working. When a dial succeeds the caller goes back to the real connection.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import time
from collections.abc import Callable

from tunnelkeeper.sim.cflog import LEVELS, CfLogger, write_all

CURVES = "Tunnel connection curve preferences: [X25519MLKEM768 CurveID(65074) CurveP256]"
OBSERVER_EVERY = 500  # attempts between "observer channel buffer is full" warnings
YIELD_EVERY_SECONDS = 0.005
# the real binary's pace (shared/reference/cloudflared.md): ~19,000 lines/s, 3 per attempt
ATTEMPTS_PER_SECOND = 6300
ATTEMPTS_PER_SLICE = int(ATTEMPTS_PER_SECOND * YIELD_EVERY_SECONDS)
DIAL_TIMEOUT_SECONDS = 1.0


def _dial(host: str, port: int) -> int:
    """One real dial; 0 when the edge accepted, else the errno (ECONNREFUSED when closed: the
    kernel answers at once, so the loop is as tight as cloudflared's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(DIAL_TIMEOUT_SECONDS)
        try:
            return s.connect_ex((host, port))
        except TimeoutError:
            return errno.ETIMEDOUT


def _lines(index: int, ip: str, error: str, stamp: str, observer: bool) -> bytes:
    common = {"connIndex": index, "event": 0, "ip": ip}
    records = [
        {**common, "level": "info", "message": CURVES, "time": stamp},
        {
            **common,
            "error": error,
            "level": "error",
            "message": "Unable to establish connection with Cloudflare edge",
            "time": stamp,
        },
        {
            **common,
            "error": error,
            "level": "error",
            "message": "Serve tunnel error",
            "time": stamp,
        },
    ]
    if observer:
        records.append(
            {"level": "warn", "message": "observer channel buffer is full", "time": stamp}
        )
    return b"".join(
        json.dumps(r, sort_keys=True, separators=(",", ":")).encode() + b"\n" for r in records
    )


def can_flood(log: CfLogger) -> bool:
    """The fast loop writes JSON at info level; other settings take the plain path."""
    return log.is_json and log.min_level <= LEVELS["info"]


async def flood_until_reachable(
    log: CfLogger, index: int, edge: str, is_draining: Callable[[], bool]
) -> None:
    """Dial ``edge`` in a tight loop, logging like cloudflared, until it accepts (return) or
    the connector drains."""
    host, _, port_text = edge.rpartition(":")
    host = host.strip("[]")
    port = int(port_text)
    attempts = 0
    loop = asyncio.get_running_loop()
    while not is_draining():
        until = loop.time() + YIELD_EVERY_SECONDS
        batch: list[bytes] = []
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        while loop.time() < until and len(batch) < ATTEMPTS_PER_SLICE:
            code = _dial(host, port)
            if code in (0, errno.EISCONN):
                if batch:
                    write_all(log.fd, b"".join(batch))
                return
            if code != errno.ECONNREFUSED:
                if batch:
                    write_all(log.fd, b"".join(batch))
                return  # not the tight-loop case: the caller's path handles it
            attempts += 1
            text = os.strerror(code)
            error = f"DialContext error: dial tcp {edge}: connect: {text[:1].lower()}{text[1:]}"
            batch.append(_lines(index, host, error, stamp, attempts % OBSERVER_EVERY == 0))
        write_all(log.fd, b"".join(batch))
        await asyncio.sleep(max(0.0, until - loop.time()))
