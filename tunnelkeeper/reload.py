"""Applying a reloaded config to a running daemon with the least disruption.

Added tunnels start; removed ones drain (surge/drain never applies to them: they go away);
changed replica counts scale (new slots start, extra slots drain); new timings apply at once; a
changed token source gets a new feed; changed cloudflared arguments roll the replicas; a new
cloudflared version rolls them with a canary. What cannot change in place — ``[daemon]``,
``[alerts]``, ``[fleet]`` — is kept as it runs and reported as needing a restart (which, with
adoption, costs no capacity either).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import structlog

from tunnelkeeper.config import Config
from tunnelkeeper.tokens import TokenFeed

if TYPE_CHECKING:
    from tunnelkeeper.daemon import Daemon

log = structlog.get_logger("tunnelkeeper.reload")


async def reconfigure(daemon: Daemon, new: Config) -> dict[str, Any]:
    old = daemon.config
    restart_for = [k for k in ("daemon", "alerts", "fleet") if getattr(old, k) != getattr(new, k)]
    if restart_for:
        log.warning(
            "reload_needs_restart",
            sections=restart_for,
            note="kept as running; `systemctl restart tunnelkeeper` hands replicas over",
        )
        new = dataclasses.replace(new, daemon=old.daemon, alerts=old.alerts, fleet=old.fleet)
    daemon.config = new
    added, removed, changed = [], [], []
    for t in old.tunnels:
        if new.tunnel(t.name) is None:
            removed.append(t.name)
            sup = daemon.sups.pop(t.name)
            await daemon.feeds.pop(t.name).aclose()
            sup.reconfigure(dataclasses.replace(t, replicas=0), new.cloudflared)
            daemon.retiring.append(sup)
    for t in new.tunnels:
        before = old.tunnel(t.name)
        if before is None:
            added.append(t.name)
            sup = daemon.add_tunnel(t)
            daemon.upgrader.adopt_supervisor(sup)
            await daemon.feeds[t.name].start()
            continue
        sup = daemon.sups[t.name]
        if before != t or old.cloudflared != new.cloudflared:
            sup.reconfigure(t, new.cloudflared)
        if before != t:
            changed.append(t.name)
        if before.token != t.token or before.id != t.id:
            await daemon.feeds[t.name].aclose()
            feed = daemon.feeds[t.name] = TokenFeed(t, sup, daemon.metrics, clock=daemon.clock)
            await feed.start()
    if old.cloudflared != new.cloudflared:
        await daemon.upgrader.prepare(new.cloudflared)
    daemon.wake.set()
    return {
        "added": added,
        "removed": removed,
        "changed": changed,
        "cloudflared_changed": old.cloudflared != new.cloudflared,
        "restart_required_for": restart_for,
    }
