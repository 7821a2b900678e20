"""Simulator-only control routes under ``{api}/sim``: faults and a state view for tests.

Same Bearer auth as the API, not rate limited (the API middleware decides both).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from tunnelkeeper.sim.edge import Edge
from tunnelkeeper.sim.envelope import ApiError, envelope, json_object
from tunnelkeeper.sim.shapes import sim_state_json
from tunnelkeeper.sim.state import Account

log = logging.getLogger("tunnelkeeper.sim")

ACTIONS = ("partition", "heal", "refuse_registrations")


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    if key not in body:
        raise ApiError(400, 1001, f'"{key}" is required (a string, or null for all)')
    value = body[key]
    if value is not None and (not isinstance(value, str) or not value):
        raise ApiError(400, 1001, f'"{key}" must be a non-empty string or null')
    return value


def add_sim_routes(app: web.Application, prefix: str, account: Account, edge: Edge) -> None:
    async def faults(request: web.Request) -> web.Response:
        body = await json_object(request)
        action = body.get("action")
        dropped = 0
        if action == "partition":
            connector_id = _optional_str(body, "connector_id")
            dropped = await edge.partition(connector_id.lower() if connector_id else None)
            log.info(
                "fault_partition connector=%s dropped_connections=%d",
                connector_id or "all",
                dropped,
            )
        elif action == "heal":
            await edge.heal()
            log.info("fault_healed")
        elif action == "refuse_registrations":
            name = _optional_str(body, "tunnel")
            if name is None:
                account.faults.refuse_all = True
            else:
                tunnel = account.active_by_name(name)
                if tunnel is None:
                    raise ApiError(404, 1003, "Tunnel not found")
                account.faults.refused.add(tunnel.id)
            log.info("fault_refuse_registrations tunnel=%s", name or "all")
        else:
            raise ApiError(400, 1001, f"action must be one of {', '.join(ACTIONS)}")
        return envelope(
            {"action": action, "dropped_connections": dropped, "faults": account.faults.describe()}
        )

    async def state(request: web.Request) -> web.Response:
        account.prune()
        return envelope(sim_state_json(account))

    app.router.add_post(prefix + "/faults", faults)
    app.router.add_get(prefix + "/state", state)
