"""``tunnelkeeper refresh-secret``: a new tunnel secret through the Cloudflare API, stored in the
tunnel's token source so that every host's daemon rolls to it.

Order matters because Cloudflare gives no overlap: once the PATCH lands, old-secret connectors
keep their live connections but can register no new ones. So everything that can be checked is
checked *before* the PATCH ([fleet] credentials, a writable and readable source, the tunnel id),
the PATCH → GET token → write sequence is not interrupted by a cancellation, and a failure after
the PATCH says loudly that the secret changed and the new token is not stored.

Over 300 lines because one operator command, step by step, with the recovery text for each step
that can fail.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import structlog

from tunnelkeeper.cloudflare.api import CloudflareAPI, CloudflareAPIError, Connector
from tunnelkeeper.config.model import Config, FleetConfig, TunnelConfig
from tunnelkeeper.errors import TunnelkeeperError
from tunnelkeeper.logconfig import SECRETS
from tunnelkeeper.sources import MalformedTokenError, TokenSource, TokenSourceError, open_source
from tunnelkeeper.tunneltoken import TunnelToken

log = structlog.get_logger("tunnelkeeper.refresh")

WRITABLE_KINDS = "file, vault, aws-secrets-manager"
FLEET_POLL_SECONDS = 2.0
MAX_API_TOKEN_BYTES = 4096
T = TypeVar("T")


class RefreshError(TunnelkeeperError):
    """The refresh did not complete. ``secret_changed``: the PATCH went through (or may have),
    so the tunnel's secret is new and the message says how to recover."""

    def __init__(self, message: str, *, secret_changed: bool = False) -> None:
        super().__init__(message)
        self.secret_changed = secret_changed


@dataclass(frozen=True)
class RefreshResult:
    tunnel: str
    tunnel_id: str
    old_fingerprint: str | None
    new_fingerprint: str
    source: str  # description of the source the new token was written to
    version: str  # the source's version id of the new token
    old_connectors: tuple[str, ...]  # connector ids that were live before the refresh
    removed_connectors: tuple[str, ...] = ()  # --cleanup: whose connections were deleted
    cleanup_problem: str | None = None  # --cleanup asked for but not (fully) done: why

    @property
    def is_complete(self) -> bool:
        return self.cleanup_problem is None


def _read_api_token(fleet: FleetConfig) -> str:
    path = fleet.api_token_file
    try:
        data = path.read_bytes()[: MAX_API_TOKEN_BYTES + 1]
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RefreshError(f"fleet.api_token_file {path}: cannot read: {reason}") from None
    text = data.decode("utf-8", errors="replace").strip()
    if not text or len(data) > MAX_API_TOKEN_BYTES or any(c.isspace() for c in text):
        raise RefreshError(f"fleet.api_token_file {path}: does not hold one API token")
    SECRETS.add(text)
    return text


def _live_ids(connectors: list[Connector]) -> set[str]:
    return {c.id for c in connectors if c.live_connections > 0}


async def _preflight(tunnel: TunnelConfig, source: TokenSource) -> tuple[str, str | None]:
    """The tunnel id to refresh and the fingerprint of the token in the source now."""
    if not source.is_writable:
        raise RefreshError(
            f"tunnel {tunnel.name}: its token source ({source.description}) cannot be written; "
            f"refresh-secret stores the new token in a {WRITABLE_KINDS} source"
        )
    try:
        current = await source.read()
    except MalformedTokenError as exc:
        if tunnel.id is None:
            raise RefreshError(
                f"tunnel {tunnel.name}: the source holds no valid token ({exc}), so the tunnel "
                "id is unknown; set tunnel.id in the config"
            ) from None
        return tunnel.id, None  # it will be overwritten with a good one
    except TokenSourceError as exc:
        raise RefreshError(
            f"tunnel {tunnel.name}: cannot read the token source ({exc}); nothing was changed. "
            "Fix the source first, so that the new token can be stored"
        ) from None
    return (tunnel.id or current.token.tunnel_id), current.token.fingerprint


async def _patch_fetch_store(
    api: CloudflareAPI, tunnel: TunnelConfig, tunnel_id: str, source: TokenSource
) -> tuple[TunnelToken, str]:
    """PATCH the secret, fetch the new token, validate it, write it to the source."""
    try:
        await api.refresh_secret(tunnel_id)
    except CloudflareAPIError as exc:
        if exc.status is None:  # no answer: the PATCH may or may not have landed
            raise RefreshError(
                f"tunnel {tunnel.name}: {exc}; the secret MAY have been changed. Run "
                "refresh-secret again: it refreshes once more and stores the result",
                secret_changed=True,
            ) from None
        raise RefreshError(f"tunnel {tunnel.name}: {exc}; the secret was not changed") from None
    changed = (
        f"THE TUNNEL SECRET OF {tunnel.name} ({tunnel_id}) WAS CHANGED, BUT THE NEW TOKEN IS "
        "NOT STORED"
    )
    recover = (
        f"Running replicas keep their live connections, but none can reconnect. Recover by "
        f"running `tunnelkeeper refresh-secret {tunnel.name}` again once the problem is fixed "
        f"(it refreshes again and stores the result), or fetch the current token with "
        f"GET /accounts/<account>/cfd_tunnel/{tunnel_id}/token and store it yourself"
    )
    try:
        token = await api.get_token(tunnel_id)
    except TunnelkeeperError as exc:  # CloudflareAPIError, InvalidTokenError
        raise RefreshError(
            f"{changed}: fetching it failed: {exc}. {recover}", secret_changed=True
        ) from None
    SECRETS.add(token.reveal())
    if token.tunnel_id != tunnel_id:
        raise RefreshError(
            f"{changed}: the API returned token {token.fingerprint} for tunnel "
            f"{token.tunnel_id}, not {tunnel_id}. {recover}",
            secret_changed=True,
        )
    try:
        version = await source.write(token)
    except TokenSourceError as exc:
        raise RefreshError(
            f"{changed}: writing it failed: {exc}. {recover}", secret_changed=True
        ) from None
    return token, version


async def _uninterrupted(work: Awaitable[T]) -> T:
    """Run ``work`` to completion even if the caller is cancelled meanwhile (then re-raise)."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait({task})
        raise


async def _cleanup(
    api: CloudflareAPI,
    tunnel: TunnelConfig,
    tunnel_id: str,
    old: set[str],
    *,
    wait_seconds: float,
    clock: Callable[[], float],
) -> tuple[tuple[str, ...], str | None]:
    """Once the fleet has moved (as many new live connectors as there were old ones), give the
    old ones their drain time, then delete each old connector's connections."""
    deadline = clock() + wait_seconds
    while True:
        live = _live_ids(await api.list_connectors(tunnel_id))
        if len(live - old) >= len(old):
            break
        if clock() >= deadline:
            return (), (
                f"after {wait_seconds:g} s only {len(live - old)} of {len(old)} replacement "
                "connectors are live; the old connectors were left alone (run "
                f"`cloudflared tunnel cleanup --connector-id ID {tunnel_id}` once the fleet "
                "has moved)"
            )
        await asyncio.sleep(FLEET_POLL_SECONDS)
    # Old replicas are draining now; deleting their connections would cut requests in flight.
    drain_deadline = min(deadline, clock() + tunnel.grace_period_seconds + 5.0)
    while live & old and clock() < drain_deadline:
        await asyncio.sleep(FLEET_POLL_SECONDS)
        live = _live_ids(await api.list_connectors(tunnel_id))
    removed, failed = [], []
    for connector_id in sorted(old):
        try:
            await api.delete_connections(tunnel_id, connector_id)
        except CloudflareAPIError as exc:
            failed.append(f"{connector_id} ({exc})")
            continue
        removed.append(connector_id)
        log.info("connector_cleaned_up", tunnel=tunnel.name, connector=connector_id)
    return tuple(removed), ("could not remove " + "; ".join(failed)) if failed else None


async def refresh_tunnel_secret(
    config: Config,
    tunnel: TunnelConfig,
    *,
    cleanup: bool,
    wait_seconds: float,
    clock: Callable[[], float] = time.monotonic,
) -> RefreshResult:
    """Refresh ``tunnel``'s secret and store the new token in its source.

    Raises :class:`RefreshError` (``secret_changed`` tells whether the tunnel's secret is new).
    With ``cleanup``, waits up to ``wait_seconds`` for the fleet to move before deleting the
    connections of connectors that were live before; a timeout is reported in the result.
    """
    fleet = config.fleet
    if fleet is None:
        raise RefreshError(
            f"tunnel {tunnel.name}: refresh-secret needs a [fleet] section with api_url, "
            "account_id and api_token_file (Cloudflare API credentials with Tunnel Edit)"
        )
    api_token = _read_api_token(fleet)
    try:
        source = open_source(tunnel.token)
    except TokenSourceError as exc:
        raise RefreshError(f"tunnel {tunnel.name}: {exc}") from None
    api = CloudflareAPI(fleet.api_url, fleet.account_id, api_token)
    try:
        tunnel_id, old_fingerprint = await _preflight(tunnel, source)
        try:
            old = _live_ids(await api.list_connectors(tunnel_id))
        except CloudflareAPIError as exc:
            raise RefreshError(f"tunnel {tunnel.name}: {exc}; nothing was changed") from None
        token, version = await _uninterrupted(_patch_fetch_store(api, tunnel, tunnel_id, source))
        log.info("tunnel_secret_refreshed", tunnel=tunnel.name, token=token.fingerprint)
        result = RefreshResult(
            tunnel=tunnel.name,
            tunnel_id=tunnel_id,
            old_fingerprint=old_fingerprint,
            new_fingerprint=token.fingerprint,
            source=source.description,
            version=version,
            old_connectors=tuple(sorted(old)),
        )
        if not cleanup or not old:
            return result
        try:
            removed, problem = await _cleanup(
                api, tunnel, tunnel_id, old, wait_seconds=wait_seconds, clock=clock
            )
        except CloudflareAPIError as exc:
            removed, problem = (), f"cleanup failed: {exc}"
        return replace(result, removed_connectors=removed, cleanup_problem=problem)
    finally:
        await source.aclose()
        await api.aclose()


def cleanup_wait_seconds(config: Config, tunnel: TunnelConfig) -> float:
    """How long --cleanup waits for every host to roll: each replica, one at a time, needs up
    to ready_timeout plus its grace period; plus the daemons' source polling."""
    poll = getattr(tunnel.token, "poll_seconds", 60.0)
    per_replica = config.daemon.ready_timeout_seconds + tunnel.grace_period_seconds
    return tunnel.replicas * per_replica + 2 * float(poll) + 30.0


def render(result: RefreshResult, *, cleanup: bool) -> str:
    lines = [
        f"{result.tunnel}: tunnel secret refreshed (tunnel {result.tunnel_id})",
        f"  token: {result.old_fingerprint or '(none valid)'} -> {result.new_fingerprint}",
        f"  stored in: {result.source} (version {result.version})",
        "  every host's daemon rolls its replicas to it when it next polls the source",
    ]
    if cleanup:
        if not result.old_connectors:
            lines.append("  cleanup: no connector was live before the refresh; nothing to remove")
        elif result.removed_connectors:
            lines.append(
                f"  cleanup: removed {len(result.removed_connectors)} connector(s) on the old "
                "secret: " + ", ".join(result.removed_connectors)
            )
        if result.cleanup_problem:
            lines.append(f"  cleanup NOT done: {result.cleanup_problem}")
    return "\n".join(lines)


def refresh_secret_command(config_path: str, tunnel: str, *, cleanup: bool) -> int:
    from tunnelkeeper.config.load import ConfigError, load_config
    from tunnelkeeper.logconfig import configure

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"tunnelkeeper: invalid config:\n{exc}", file=sys.stderr)
        return 1
    configure("warning", "console")
    tunnel_cfg = config.tunnel(tunnel)
    if tunnel_cfg is None:
        names = ", ".join(t.name for t in config.tunnels) or "none"
        print(
            f"tunnelkeeper: no tunnel named {tunnel!r} in {Path(config_path)} (tunnels: {names})",
            file=sys.stderr,
        )
        return 1
    wait = cleanup_wait_seconds(config, tunnel_cfg)
    try:
        result = asyncio.run(
            refresh_tunnel_secret(config, tunnel_cfg, cleanup=cleanup, wait_seconds=wait)
        )
    except RefreshError as exc:
        prefix = "tunnelkeeper: ERROR: " if exc.secret_changed else "tunnelkeeper: "
        print(prefix + SECRETS.scrub(str(exc)), file=sys.stderr)
        return 1
    print(render(result, cleanup=cleanup))
    return 0 if result.is_complete else 1


async def scheduled_refresh(config: Config, tunnel: TunnelConfig) -> None:
    """The daemon's scheduled refresh (no cleanup). Raises RefreshError; the scheduler logs it
    and retries with backoff (a retry after a failed store refreshes again, which recovers)."""
    result = await refresh_tunnel_secret(config, tunnel, cleanup=False, wait_seconds=0.0)
    log.info("scheduled_refresh_completed", tunnel=tunnel.name, token=result.new_fingerprint)
