"""Applying a reloaded config to a running daemon with the least disruption.

Added tunnels start; removed ones drain (surge/drain never applies to them: they go away);
changed replica counts scale (new slots start, extra slots drain); new timings apply at once; a
changed token source gets a new feed; changed cloudflared arguments roll the replicas; a new
cloudflared version rolls them with a canary. What cannot change in place — ``[daemon]``,
``[alerts]``, ``[fleet]`` — is kept as it runs and reported as needing a restart (which, with
adoption, costs no capacity either).
"""

from __future__ import annotations

from typing import Any

import structlog

from tunnelkeeper.cloudflared.upgrade import Upgrader
from tunnelkeeper.config.model import Config
from tunnelkeeper.service.tunnelset import TunnelSet
from tunnelkeeper.structs import replace

log = structlog.get_logger("tunnelkeeper.reload")


async def reconfigure(
    tunnels: TunnelSet, upgrader: Upgrader, old: Config, new: Config
) -> tuple[Config, dict[str, Any]]:
    """Apply ``new`` over ``old``; returns the config now in force and what changed."""
    restart_for = [k for k in ("daemon", "alerts", "fleet") if getattr(old, k) != getattr(new, k)]
    if restart_for:
        log.warning(
            "reload_needs_restart",
            sections=restart_for,
            note="kept as running; `systemctl restart tunnelkeeper` hands replicas over",
        )
        new = replace(new, daemon=old.daemon, alerts=old.alerts, fleet=old.fleet)
    tunnels.cloudflared = new.cloudflared
    added, removed, changed = [], [], []
    for t in old.tunnels:
        if new.tunnel(t.name) is None:
            removed.append(t.name)
            await tunnels.remove(t)
    for t in new.tunnels:
        before = old.tunnel(t.name)
        if before is None:
            added.append(t.name)
            upgrader.adopt_supervisor(tunnels.add(t))
            await tunnels.feeds[t.name].start()
            continue
        if before != t or old.cloudflared != new.cloudflared:
            tunnels.sups[t.name].reconfigure(t, new.cloudflared)
        if before != t:
            changed.append(t.name)
        if before.token != t.token or before.id != t.id:
            await tunnels.renew_feed(t)
    if old.cloudflared != new.cloudflared:
        await upgrader.prepare(new.cloudflared)
    tunnels.wake.set()
    return new, {
        "added": added,
        "removed": removed,
        "changed": changed,
        "cloudflared_changed": old.cloudflared != new.cloudflared,
        "restart_required_for": restart_for,
    }
