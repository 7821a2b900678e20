"""The JSON shapes the simulated API returns (Cloudflare's tunnel, connector, connection)."""

from __future__ import annotations

from typing import Any

from tunnelkeeper.sim.state import Account, Connection, Connector, Tunnel, iso


def connection_json(connector: Connector, conn: Connection) -> dict[str, Any]:
    return {
        "id": conn.id,
        "uuid": conn.id,
        "client_id": connector.id,
        "client_version": connector.version,
        "colo_name": conn.colo,
        "opened_at": iso(conn.opened_at),
        "origin_ip": conn.origin_ip,
        "is_pending_reconnect": not conn.is_live,
    }


def _sorted_connectors(tunnel: Tunnel) -> list[Connector]:
    return sorted(tunnel.connectors.values(), key=lambda c: (c.run_at, c.id))


def connector_json(connector: Connector) -> dict[str, Any]:
    conns = sorted(connector.connections.values(), key=lambda c: c.conn_index)
    return {
        "id": connector.id,
        "arch": connector.arch,
        "version": connector.version,
        "run_at": iso(connector.run_at),
        "config_version": 0,
        "features": list(connector.features),
        "conns": [connection_json(connector, c) for c in conns],
    }


def tunnel_json(account: Account, tunnel: Tunnel) -> dict[str, Any]:
    conns = [
        connection_json(connector, c)
        for connector in _sorted_connectors(tunnel)
        for c in sorted(connector.connections.values(), key=lambda c: c.conn_index)
    ]
    return {
        "id": tunnel.id,
        "account_tag": account.account_id,
        "name": tunnel.name,
        "created_at": iso(tunnel.created_at),
        "deleted_at": iso(tunnel.deleted_at),
        "conns_active_at": iso(tunnel.conns_active_at),
        "conns_inactive_at": iso(tunnel.conns_inactive_at),
        "connections": conns,
        "metadata": {},
        "remote_config": tunnel.config_src == "cloudflare",
        "config_src": tunnel.config_src,
        "status": tunnel.status,
        "tun_type": "cfd_tunnel",
    }


def connectors_json(tunnel: Tunnel) -> list[dict[str, Any]]:
    return [connector_json(c) for c in _sorted_connectors(tunnel)]


def sim_state_json(account: Account) -> dict[str, Any]:
    """What tests need to see at a glance, keyed by tunnel name (deleted tunnels left out)."""
    tunnels: dict[str, Any] = {}
    for tunnel in account.tunnels.values():
        if tunnel.is_deleted:
            continue
        connectors: dict[str, Any] = {}
        for c in _sorted_connectors(tunnel):
            conns = list(c.connections.values())
            connectors[c.id] = {
                "label": c.label,
                "version": c.version,
                "run_at": iso(c.run_at),
                "secret_generation": c.secret_generation,
                "live_connections": sum(1 for x in conns if x.is_live),
                "draining_connections": sum(1 for x in conns if x.is_live and x.is_draining),
                "pending_connections": sum(1 for x in conns if not x.is_live),
                "requests_served": c.requests_served,
            }
        tunnels[tunnel.name] = {
            "id": tunnel.id,
            "status": tunnel.status,
            "secret_generation": tunnel.secret_generation,
            "origin_url": tunnel.origin_url,
            "live_connections": tunnel.live_count(),
            "requests_served": sum(c.requests_served for c in tunnel.connectors.values()),
            "connectors": connectors,
        }
    return {
        "account_id": account.account_id,
        "tunnels": tunnels,
        "faults": account.faults.describe(),
    }
