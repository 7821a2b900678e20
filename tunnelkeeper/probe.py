"""Asking a replica how it is: cloudflared's /ready (per-replica truth) and /metrics (version).

/healthcheck always says OK and ha_connections reads 1 with zero connections, so neither is
used. Bodies are hostile input: anything unexpected is a failed probe, never an exception.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

MAX_BODY_BYTES = 64 * 1024
MAX_METRICS_CHARS = 2 * 1024 * 1024
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
    try:
        for family in text_string_to_metric_families(text):
            if family.name != "build_info":
                continue
            for sample in family.samples:
                version = sample.labels.get("version", "")
                if _VERSION.fullmatch(version):
                    return version
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    return None


class Prober:
    """One pooled HTTP client for all replicas' metrics servers (loopback only)."""

    def __init__(self, timeout_seconds: float) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_seconds),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=256),
            trust_env=False,
            follow_redirects=False,
        )

    async def ready(self, port: int) -> ReadyResult:
        try:
            resp = await self._client.get(f"http://127.0.0.1:{port}/ready")
        except httpx.HTTPError as exc:
            return ReadyResult(False, error=type(exc).__name__)
        return parse_ready(resp.status_code, resp.content)

    async def version(self, port: int) -> str | None:
        try:
            resp = await self._client.get(f"http://127.0.0.1:{port}/metrics")
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            return None
        return parse_build_version(resp.text)

    async def aclose(self) -> None:
        await self._client.aclose()
