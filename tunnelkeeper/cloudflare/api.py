"""A small client for the Cloudflare API's tunnel endpoints (and the simulator's copy of them).

Every response is checked for both the HTTP status and the envelope's ``success``; errors are
translated once, here, into :class:`CloudflareAPIError` with a message safe to show (never the
API token, never a tunnel token). A 429 becomes :class:`RateLimited` carrying ``retry-after``.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunnelkeeper.errors import TunnelkeeperError
from tunnelkeeper.tunneltoken import TunnelToken

if TYPE_CHECKING:  # imported where used: the daemon loads httpx only if it needs it
    import httpx

MAX_BODY_BYTES = 8 * 1024 * 1024


class CloudflareAPIError(TunnelkeeperError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RateLimited(CloudflareAPIError):
    def __init__(self, retry_after_seconds: float) -> None:
        super().__init__(
            f"rate limited by the Cloudflare API (retry after {retry_after_seconds:g}s)", 429
        )
        self.retry_after_seconds = retry_after_seconds


@dataclass(frozen=True)
class Connection:
    id: str
    client_id: str
    colo_name: str
    is_pending_reconnect: bool


@dataclass(frozen=True)
class Connector:
    id: str
    version: str
    conns: tuple[Connection, ...]

    @property
    def live_connections(self) -> int:
        return sum(1 for c in self.conns if not c.is_pending_reconnect)


def _retry_after(resp: httpx.Response) -> float:
    raw = resp.headers.get("retry-after", "")
    try:
        return min(3600.0, max(1.0, float(raw)))
    except ValueError:
        return 300.0  # Cloudflare blocks for five minutes after a 429


def _errors_text(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        parts = []
        for e in body["errors"][:3]:
            if isinstance(e, dict):
                code, msg = e.get("code"), e.get("message")
                parts.append(f"{code}: {str(msg)[:200]}" if code else str(msg)[:200])
        if parts:
            return "; ".join(parts)
    return "no error details"


class CloudflareAPI:
    def __init__(
        self, api_url: str, account_id: str, api_token: str, *, timeout_seconds: float = 15.0
    ) -> None:
        import httpx  # only a daemon with [cloudflare] configured loads it

        self.api_url = api_url.rstrip("/")
        self.account_id = account_id
        self._client = httpx.AsyncClient(
            timeout=timeout_seconds,
            headers={"Authorization": f"Bearer {api_token}"},
            follow_redirects=False,
        )
        self.requests_made = 0

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        url = f"{self.api_url}/accounts/{self.account_id}{path}"
        self.requests_made += 1
        try:
            resp = await self._client.request(method, url, **kw)
        except httpx.HTTPError as exc:
            raise CloudflareAPIError(f"Cloudflare API unreachable ({type(exc).__name__})") from exc
        if resp.status_code == 429:
            raise RateLimited(_retry_after(resp))
        if len(resp.content) > MAX_BODY_BYTES:
            raise CloudflareAPIError("Cloudflare API response too large", resp.status_code)
        try:
            body = resp.json()
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict) or "success" not in body:
            raise CloudflareAPIError(
                f"Cloudflare API answered HTTP {resp.status_code} without an API envelope",
                resp.status_code,
            )
        if resp.status_code >= 400 or body.get("success") is not True:
            raise CloudflareAPIError(
                f"Cloudflare API {method} {path.split('?')[0]} failed with HTTP "
                f"{resp.status_code}: {_errors_text(body)}",
                resp.status_code,
            )
        return body.get("result")

    async def get_tunnel(self, tunnel_id: str) -> dict[str, Any]:
        result = await self._call("GET", f"/cfd_tunnel/{tunnel_id}")
        if not isinstance(result, dict):
            raise CloudflareAPIError("tunnel result is not an object")
        return result

    async def list_connectors(self, tunnel_id: str) -> list[Connector]:
        result = await self._call("GET", f"/cfd_tunnel/{tunnel_id}/connections")
        if not isinstance(result, list):
            raise CloudflareAPIError("connections result is not a list")
        connectors = []
        for item in result:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                continue
            conns = []
            raw_conns = item.get("conns")
            for c in raw_conns if isinstance(raw_conns, list) else []:
                if isinstance(c, dict):
                    conns.append(
                        Connection(
                            id=str(c.get("id", "")),
                            client_id=str(c.get("client_id", item["id"])),
                            colo_name=str(c.get("colo_name", ""))[:32],
                            # a missing field counts as live (cloudflare-api.md §3)
                            is_pending_reconnect=c.get("is_pending_reconnect") is True,
                        )
                    )
            connectors.append(
                Connector(item["id"], str(item.get("version", ""))[:40], tuple(conns))
            )
        return connectors

    async def get_token(self, tunnel_id: str) -> TunnelToken:
        result = await self._call("GET", f"/cfd_tunnel/{tunnel_id}/token")
        if not isinstance(result, str):
            raise CloudflareAPIError("token result is not a string")
        return TunnelToken.parse(result)

    async def refresh_secret(self, tunnel_id: str) -> None:
        """PATCH a new 32-byte random tunnel_secret. Old-secret connectors keep their live
        connections but can register no new ones."""
        secret = base64.b64encode(os.urandom(32)).decode()
        await self._call("PATCH", f"/cfd_tunnel/{tunnel_id}", json={"tunnel_secret": secret})

    async def delete_connections(self, tunnel_id: str, client_id: str | None = None) -> None:
        params = {"client_id": client_id} if client_id else None
        await self._call("DELETE", f"/cfd_tunnel/{tunnel_id}/connections", params=params)

    async def aclose(self) -> None:
        await self._client.aclose()
