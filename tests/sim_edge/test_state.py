"""Pure tests of the account model and the rate limiter, with an explicit clock."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import pytest

from tunnelkeeper.sim.ratelimit import RateLimiter
from tunnelkeeper.sim.state import Account, Clock, RegistrationRefused, Tunnel


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> Clock:
        return Clock(monotonic=lambda: self.now, wall=lambda: datetime(2026, 1, 1, tzinfo=UTC))


def connect(account: Account, tunnel: Tunnel, connector_id: str, n: int = 4) -> list[str]:
    ids = []
    for i in range(n):
        conn, _ = account.register(
            tunnel,
            connector_id=connector_id,
            conn_index=i,
            version="2026.8.2",
            arch="linux_amd64",
            label="x",
            features=[],
            origin_ip="127.0.0.1",
        )
        ids.append(conn.id)
    return ids


def test_status_follows_connections_and_pending_expiry() -> None:
    t = FakeTime()
    account = Account("a" * 32, pending_reconnect_seconds=120, clock=t.clock())
    tunnel = account.create_tunnel("portal", "http://127.0.0.1:1")
    assert tunnel.status == "inactive"
    a = str(uuid.uuid4())
    ids = connect(account, tunnel, a)
    assert tunnel.status == "healthy"
    account.disconnect(ids[0])
    assert tunnel.status == "degraded"
    t.now += 119
    account.prune()
    assert tunnel.status == "degraded" and len(tunnel.connections()) == 4
    t.now += 2
    account.prune()
    assert tunnel.status == "degraded" and len(tunnel.connections()) == 3  # 3 live < 4
    for cid in ids[1:]:
        account.disconnect(cid)
    assert tunnel.status == "down" and tunnel.conns_active_at is None
    t.now += 121
    account.prune()
    assert tunnel.connectors == {} and tunnel.status == "down"


def test_reregistering_an_index_replaces_the_pending_connection() -> None:
    account = Account("a" * 32, pending_reconnect_seconds=120, clock=FakeTime().clock())
    tunnel = account.create_tunnel("portal", "http://127.0.0.1:1")
    a = str(uuid.uuid4())
    ids = connect(account, tunnel, a)
    account.disconnect(ids[2])
    connect(account, tunnel, a, n=3)
    assert len(tunnel.connections()) == 4 and tunnel.status == "healthy"


def test_secret_refresh_refuses_the_old_token_only() -> None:
    account = Account("a" * 32, pending_reconnect_seconds=120, clock=FakeTime().clock())
    tunnel = account.create_tunnel("portal", "http://127.0.0.1:1")
    old = account.token_for(tunnel).reveal()
    assert account.authenticate(old) is tunnel
    account.refresh_secret(tunnel, os.urandom(32))
    with pytest.raises(RegistrationRefused, match="Invalid tunnel secret"):
        account.authenticate(old)
    assert account.authenticate(account.token_for(tunnel).reveal()) is tunnel
    assert tunnel.secret_generation == 2


def test_rate_limiter_blocks_for_the_block_length() -> None:
    t = FakeTime()
    limiter = RateLimiter(3, window_seconds=300, block_seconds=60, clock=lambda: t.now)
    assert [limiter.check("k").is_allowed for _ in range(3)] == [True] * 3
    denied = limiter.check("k")
    assert not denied.is_allowed and denied.retry_after_seconds == 60
    assert denied.headers()["retry-after"] == "60"
    assert limiter.check("other").is_allowed
    t.now += 59
    assert not limiter.check("k").is_allowed
    t.now += 2
    assert limiter.check("k").is_allowed
