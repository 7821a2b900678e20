"""The simulated Cloudflare API: ``/client/v4/accounts/{account_id}/cfd_tunnel``.

Every answer, errors included, carries the full envelope
(success, errors, messages, result). Requests need ``Authorization: Bearer``;
tunnel routes are rate limited per API token like Cloudflare's API.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tunnelkeeper.sim.edge import Edge
from tunnelkeeper.sim.envelope import ApiError, envelope, failure, json_object
from tunnelkeeper.sim.ratelimit import RateLimiter
from tunnelkeeper.sim.shapes import connector_json, connectors_json, tunnel_json
from tunnelkeeper.sim.simcontrol import add_sim_routes
from tunnelkeeper.sim.state import MIN_SECRET_BYTES, Account, Tunnel

log = logging.getLogger("tunnelkeeper.sim")

PREFIX = "/client/v4"
TUNNELS = PREFIX + "/accounts/{account_id}/cfd_tunnel"
MAX_API_BODY_BYTES = 1024 * 1024
MAX_PER_PAGE = 1000
DEFAULT_PER_PAGE = 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_secret(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ApiError(400, 1001, "tunnel_secret must be a base64 string")
    try:
        secret = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ApiError(400, 1001, "tunnel_secret is not valid base64") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ApiError(400, 1001, f"tunnel_secret must decode to at least {MIN_SECRET_BYTES} bytes")
    return secret


def parse_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        raise ApiError(400, 1001, "name must be a non-empty string of at most 255 characters")
    if not value.isprintable():
        raise ApiError(400, 1001, "name must not contain control characters")
    return value


class Api:
    def __init__(
        self,
        account: Account,
        edge: Edge,
        *,
        api_token: str,
        limiter: RateLimiter,
        default_origin_url: str,
    ) -> None:
        self.account = account
        self.edge = edge
        self.api_token = api_token
        self.limiter = limiter
        self.default_origin_url = default_origin_url

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_API_BODY_BYTES, middlewares=[self._middleware])
        r = app.router
        r.add_get(TUNNELS, self._list)
        r.add_post(TUNNELS, self._create)
        r.add_get(TUNNELS + "/{tunnel_id}", self._get)
        r.add_patch(TUNNELS + "/{tunnel_id}", self._patch)
        r.add_delete(TUNNELS + "/{tunnel_id}", self._delete)
        r.add_get(TUNNELS + "/{tunnel_id}/token", self._token)
        r.add_get(TUNNELS + "/{tunnel_id}/connections", self._connections)
        r.add_delete(TUNNELS + "/{tunnel_id}/connections", self._cleanup)
        r.add_get(TUNNELS + "/{tunnel_id}/connectors/{connector_id}", self._connector)
        add_sim_routes(app, PREFIX + "/sim", self.account, self.edge)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        routing_error = request.match_info.http_exception
        if routing_error is not None:
            if routing_error.status == 405:
                return failure(405, 10405, "Method not allowed")
            return failure(404, 7003, "No route for the URI")
        auth = request.headers.get("Authorization", "")
        scheme, _, presented = auth.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return failure(401, 10000, "Authentication error: missing Bearer API token")
        if not hmac.compare_digest(presented.strip().encode(), self.api_token.encode()):
            return failure(401, 10000, "Authentication error: invalid API token")
        limit_headers: dict[str, str] = {}
        if not request.path.startswith(PREFIX + "/sim/"):
            decision = self.limiter.check(self.api_token)
            limit_headers = decision.headers()
            if not decision.is_allowed:
                log.info("api_rate_limited retry_after=%d", decision.retry_after_seconds)
                resp = failure(429, 971, "Please wait and consider throttling your request speed")
                resp.headers.update(limit_headers)
                return resp
        try:
            if request.match_info.get("account_id", self.account.account_id) != (
                self.account.account_id
            ):
                raise ApiError(403, 9109, "Unauthorized to access requested resource")
            response = await handler(request)
        except ApiError as exc:
            response = failure(exc.status, exc.code, exc.message)
        except web.HTTPRequestEntityTooLarge:
            response = failure(413, 1001, f"Request body larger than {MAX_API_BODY_BYTES} bytes")
        except web.HTTPException as exc:
            response = failure(exc.status, 1000, exc.reason)
        except Exception:
            log.exception("api_handler_failed path=%s", request.path)
            response = failure(500, 1000, "Internal error in the simulated API")
        response.headers.update(limit_headers)
        return response

    def _tunnel(self, request: web.Request, *, allow_deleted: bool = False) -> Tunnel:
        self.account.prune()
        tunnel = self.account.tunnels.get(request.match_info["tunnel_id"].lower())
        if tunnel is None:
            raise ApiError(404, 1003, "Tunnel not found")
        if tunnel.is_deleted and not allow_deleted:
            raise ApiError(400, 1022, "Tunnel has been deleted")
        return tunnel

    async def _list(self, request: web.Request) -> web.Response:
        self.account.prune()
        q = request.query
        tunnels = sorted(self.account.tunnels.values(), key=lambda t: (t.created_at, t.id))
        if "name" in q:
            tunnels = [t for t in tunnels if t.name == q["name"]]
        if "uuid" in q:
            tunnels = [t for t in tunnels if t.id == q["uuid"].lower()]
        if "is_deleted" in q:
            if q["is_deleted"] not in ("true", "false"):
                raise ApiError(400, 1001, "is_deleted must be true or false")
            want = q["is_deleted"] == "true"
            tunnels = [t for t in tunnels if t.is_deleted == want]
        if "status" in q:
            tunnels = [t for t in tunnels if t.status == q["status"]]
        if "include_prefix" in q:
            tunnels = [t for t in tunnels if t.name.startswith(q["include_prefix"])]
        if "exclude_prefix" in q:
            tunnels = [t for t in tunnels if not t.name.startswith(q["exclude_prefix"])]
        page = _int_query(q.get("page"), "page", 1, 1, 10**9)
        per_page = _int_query(q.get("per_page"), "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
        chunk = tunnels[(page - 1) * per_page : page * per_page]
        info = {
            "page": page,
            "per_page": per_page,
            "count": len(chunk),
            "total_count": len(tunnels),
            "total_pages": math.ceil(len(tunnels) / per_page),
        }
        return envelope([tunnel_json(self.account, t) for t in chunk], result_info=info)

    async def _create(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        name = parse_name(body.get("name"))
        config_src = body.get("config_src", "local")
        if config_src not in ("local", "cloudflare"):
            raise ApiError(400, 1001, "config_src must be local or cloudflare")
        secret = parse_secret(body["tunnel_secret"]) if "tunnel_secret" in body else None
        if self.account.active_by_name(name) is not None:
            raise ApiError(409, 1013, "You already have a tunnel with this name")
        tunnel = self.account.create_tunnel(name, self.default_origin_url, secret, config_src)
        log.info("tunnel_created tunnel=%s id=%s", tunnel.name, tunnel.id)
        result = tunnel_json(self.account, tunnel)
        result["token"] = self.account.token_for(tunnel).reveal()
        result["credentials_file"] = {
            "AccountTag": self.account.account_id,
            "TunnelID": tunnel.id,
            "TunnelName": tunnel.name,
            "TunnelSecret": base64.b64encode(tunnel.secret).decode(),
        }
        return envelope(result)

    async def _get(self, request: web.Request) -> web.Response:
        return envelope(tunnel_json(self.account, self._tunnel(request, allow_deleted=True)))

    async def _patch(self, request: web.Request) -> web.Response:
        tunnel = self._tunnel(request)
        body = await json_object(request)
        name = parse_name(body["name"]) if "name" in body else None
        secret = parse_secret(body["tunnel_secret"]) if "tunnel_secret" in body else None
        if name is not None and name != tunnel.name:
            other = self.account.active_by_name(name)
            if other is not None and other is not tunnel:
                raise ApiError(409, 1013, "You already have a tunnel with this name")
            log.info("tunnel_renamed tunnel=%s new_name=%s", tunnel.name, name)
            tunnel.name = name
        if secret is not None:
            self.account.refresh_secret(tunnel, secret)
            log.info(
                "secret_refreshed tunnel=%s generation=%d", tunnel.name, tunnel.secret_generation
            )
        result = tunnel_json(self.account, tunnel)
        result["token"] = self.account.token_for(tunnel).reveal()
        return envelope(result)

    async def _delete(self, request: web.Request) -> web.Response:
        tunnel = self._tunnel(request)
        dropped = self.account.delete_tunnel(tunnel)
        await self.edge.drop(dropped)
        log.info("tunnel_deleted tunnel=%s dropped_connections=%d", tunnel.name, len(dropped))
        return envelope(tunnel_json(self.account, tunnel))

    async def _token(self, request: web.Request) -> web.Response:
        tunnel = self._tunnel(request)
        return envelope(self.account.token_for(tunnel).reveal())

    async def _connections(self, request: web.Request) -> web.Response:
        return envelope(connectors_json(self._tunnel(request, allow_deleted=True)))

    async def _cleanup(self, request: web.Request) -> web.Response:
        tunnel = self._tunnel(request)
        body = await json_object(request, allow_empty=True)
        client_id = request.query.get("client_id") or body.get("client_id")
        if client_id is not None and not isinstance(client_id, str):
            raise ApiError(400, 1001, "client_id must be a string")
        dropped = self.account.remove_connections(tunnel, client_id.lower() if client_id else None)
        await self.edge.drop(dropped)
        log.info(
            "connections_cleaned tunnel=%s connector=%s dropped_connections=%d",
            tunnel.name,
            client_id or "all",
            len(dropped),
        )
        return envelope({})

    async def _connector(self, request: web.Request) -> web.Response:
        tunnel = self._tunnel(request, allow_deleted=True)
        connector = tunnel.connectors.get(request.match_info["connector_id"].lower())
        if connector is None:
            raise ApiError(404, 1003, "Connector not found")
        return envelope(connector_json(connector))


def _int_query(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, 1001, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, 1001, f"{name} must be between {low} and {high}")
    return value
