"""The simulated account: tunnels, connectors, connections and faults. Pure: no I/O.

Policy deadlines use the injected monotonic clock; the wall clock only stamps the
``*_at`` fields that the API shows to people.

Over 300 lines because the simulated account is one pure state machine.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tunnelkeeper.errors import InvalidTokenError
from tunnelkeeper.tunneltoken import TunnelToken

HA_CONNECTIONS = 4
COLOS = ("sim01", "sim02")
SECRET_BYTES = 32
MIN_SECRET_BYTES = 32

FAILED_TO_GET_TUNNEL = "Unauthorized: Failed to get tunnel"
INVALID_SECRET = "Unauthorized: Invalid tunnel secret"  # noqa: S105 - an error text


class RegistrationRefused(Exception):
    """The edge answers a registration with this message (the text cloudflared logs)."""


@dataclass(frozen=True)
class Clock:
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], datetime] = lambda: datetime.now(UTC)


def iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Connection:
    id: str
    tunnel_id: str
    connector_id: str
    conn_index: int
    colo: str
    origin_ip: str
    opened_at: datetime
    secret_generation: int
    is_draining: bool = False
    pending_deadline: float | None = None  # set once disconnected: forgotten after it

    @property
    def is_live(self) -> bool:
        return self.pending_deadline is None


@dataclass
class Connector:
    id: str
    version: str
    arch: str
    label: str
    features: list[str]
    run_at: datetime
    origin_ip: str
    secret_generation: int
    connections: dict[int, Connection] = field(default_factory=dict)  # by conn_index
    requests_served: int = 0


@dataclass
class Tunnel:
    id: str
    name: str
    secret: bytes = field(repr=False)
    origin_url: str
    created_at: datetime
    config_src: str = "cloudflare"
    secret_generation: int = 1
    deleted_at: datetime | None = None
    conns_active_at: datetime | None = None
    conns_inactive_at: datetime | None = None
    has_been_connected: bool = False
    connectors: dict[str, Connector] = field(default_factory=dict)

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    def connections(self) -> list[Connection]:
        return [c for conn in self.connectors.values() for c in conn.connections.values()]

    def live_count(self) -> int:
        return sum(1 for c in self.connections() if c.is_live)

    @property
    def status(self) -> str:
        if not self.has_been_connected:
            return "inactive"
        live = self.live_count()
        pending = len(self.connections()) - live
        if live == 0:
            return "down"
        if live >= HA_CONNECTIONS and pending == 0:
            return "healthy"
        return "degraded"


@dataclass
class Faults:
    partition_all: bool = False
    partitioned: set[str] = field(default_factory=set)  # connector ids
    refuse_all: bool = False
    refused: set[str] = field(default_factory=set)  # tunnel ids

    def is_partitioned(self, connector_id: str) -> bool:
        return self.partition_all or connector_id in self.partitioned

    def is_refused(self, tunnel_id: str) -> bool:
        return self.refuse_all or tunnel_id in self.refused

    def clear(self) -> None:
        self.partition_all = self.refuse_all = False
        self.partitioned.clear()
        self.refused.clear()

    def describe(self) -> dict[str, object]:
        return {
            "partition_all": self.partition_all,
            "partitioned_connectors": sorted(self.partitioned),
            "refuse_all": self.refuse_all,
            "refused_tunnels": sorted(self.refused),
        }


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


class Account:
    def __init__(
        self, account_id: str, pending_reconnect_seconds: float, clock: Clock | None = None
    ) -> None:
        self.account_id = account_id
        self.pending_reconnect_seconds = pending_reconnect_seconds
        self.clock = clock or Clock()
        self.tunnels: dict[str, Tunnel] = {}
        self.faults = Faults()
        self._by_connection: dict[str, Connection] = {}

    # --- tunnels -------------------------------------------------------------

    def create_tunnel(
        self,
        name: str,
        origin_url: str,
        secret: bytes | None = None,
        config_src: str = "cloudflare",
    ) -> Tunnel:
        tunnel = Tunnel(
            id=str(uuid.uuid4()),
            name=name,
            secret=secret if secret is not None else new_secret(),
            origin_url=origin_url,
            created_at=self.clock.wall(),
            config_src=config_src,
        )
        self.tunnels[tunnel.id] = tunnel
        return tunnel

    def active_by_name(self, name: str) -> Tunnel | None:
        for t in self.tunnels.values():
            if not t.is_deleted and t.name.lower() == name.lower():
                return t
        return None

    def token_for(self, tunnel: Tunnel) -> TunnelToken:
        return TunnelToken.build(self.account_id, tunnel.id, tunnel.secret)

    def refresh_secret(self, tunnel: Tunnel, secret: bytes) -> None:
        """Live connections keep serving; new registrations need the new secret."""
        if secret != tunnel.secret:
            tunnel.secret = secret
            tunnel.secret_generation += 1

    def delete_tunnel(self, tunnel: Tunnel) -> list[str]:
        """Mark deleted and forget its connections; returns connection ids to drop at the edge."""
        dropped = self.remove_connections(tunnel, None)
        tunnel.deleted_at = self.clock.wall()
        return dropped

    # --- registration --------------------------------------------------------

    def authenticate(self, token_text: str) -> Tunnel:
        """The tunnel a registration token is for; RegistrationRefused with the edge's text."""
        try:
            token = TunnelToken.parse(token_text)
        except InvalidTokenError:
            raise RegistrationRefused(FAILED_TO_GET_TUNNEL) from None
        tunnel = self.tunnels.get(token.tunnel_id)
        if token.account_tag != self.account_id or tunnel is None or tunnel.is_deleted:
            raise RegistrationRefused(FAILED_TO_GET_TUNNEL)
        if not secrets.compare_digest(token.secret, tunnel.secret):
            raise RegistrationRefused(INVALID_SECRET)
        return tunnel

    def register(
        self,
        tunnel: Tunnel,
        *,
        connector_id: str,
        conn_index: int,
        version: str,
        arch: str,
        label: str,
        features: list[str],
        origin_ip: str,
    ) -> tuple[Connection, str | None]:
        """Record a new live connection; returns it and the id of one it replaced, if any."""
        self.prune()
        at = self.clock.wall()
        connector = tunnel.connectors.get(connector_id)
        if connector is None:
            connector = Connector(
                id=connector_id,
                version=version,
                arch=arch,
                label=label,
                features=features,
                run_at=at,
                origin_ip=origin_ip,
                secret_generation=tunnel.secret_generation,
            )
            tunnel.connectors[connector_id] = connector
        connector.secret_generation = tunnel.secret_generation
        connector.origin_ip = origin_ip
        was_live = tunnel.live_count()
        colo = COLOS[conn_index % len(COLOS)]  # 4 connections over 2 data centres
        replaced = connector.connections.get(conn_index)
        replaced_id = None
        if replaced is not None:
            self._by_connection.pop(replaced.id, None)
            replaced_id = replaced.id if replaced.is_live else None
        conn = Connection(
            id=str(uuid.uuid4()),
            tunnel_id=tunnel.id,
            connector_id=connector_id,
            conn_index=conn_index,
            colo=colo,
            origin_ip=origin_ip,
            opened_at=at,
            secret_generation=tunnel.secret_generation,
        )
        connector.connections[conn_index] = conn
        self._by_connection[conn.id] = conn
        tunnel.has_been_connected = True
        if was_live == 0:
            tunnel.conns_active_at = at
            tunnel.conns_inactive_at = None
        return conn, replaced_id

    def connection(self, connection_id: str) -> Connection | None:
        return self._by_connection.get(connection_id)

    def mark_draining(self, connection_id: str) -> None:
        conn = self._by_connection.get(connection_id)
        if conn is not None:
            conn.is_draining = True

    def disconnect(self, connection_id: str) -> Connection | None:
        """The connection is gone; it stays listed as pending reconnect for a while."""
        conn = self._by_connection.get(connection_id)
        if conn is None or not conn.is_live:
            return None
        conn.pending_deadline = self.clock.monotonic() + self.pending_reconnect_seconds
        self._after_loss(self.tunnels[conn.tunnel_id])
        return conn

    def remove_connections(self, tunnel: Tunnel, connector_id: str | None) -> list[str]:
        """API cleanup: forget a connector's (or every) connection now; returns the live ones."""
        targets = (
            list(tunnel.connectors.values())
            if connector_id is None
            else [c for c in (tunnel.connectors.get(connector_id),) if c is not None]
        )
        dropped: list[str] = []
        for connector in targets:
            for conn in connector.connections.values():
                self._by_connection.pop(conn.id, None)
                if conn.is_live:
                    dropped.append(conn.id)
            del tunnel.connectors[connector.id]
        if dropped:
            self._after_loss(tunnel)
        return dropped

    def _after_loss(self, tunnel: Tunnel) -> None:
        if tunnel.live_count() == 0 and tunnel.conns_inactive_at is None:
            tunnel.conns_inactive_at = self.clock.wall()
            tunnel.conns_active_at = None

    def prune(self) -> None:
        """Forget disconnected connections whose pending-reconnect time is over."""
        now = self.clock.monotonic()
        for tunnel in self.tunnels.values():
            for cid, connector in list(tunnel.connectors.items()):
                for index, conn in list(connector.connections.items()):
                    if conn.pending_deadline is not None and conn.pending_deadline <= now:
                        del connector.connections[index]
                        self._by_connection.pop(conn.id, None)
                if not connector.connections:
                    del tunnel.connectors[cid]
