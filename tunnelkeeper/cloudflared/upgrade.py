"""Which cloudflared binary the replicas run, and moving them to a new one safely.

With ``[cloudflared.install]``, every version lives side by side under
state_dir/cloudflared/<version>/ and replicas are spawned from those versioned files, so old and
new can run at once. A version change (config edit + reload) rolls one replica first — the
canary — through the same surge → ready at the edge → drain path as a token rotation, then the
rest. If the canary never becomes ready, every tunnel goes back to the previous binary, the
failed version is not tried again until the config names another, and CloudflaredUpgradeFailed
is raised. Only when every replica runs the new version is ``cloudflared.path`` switched to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from tunnelkeeper.cloudflared.install import InstallError, install_cloudflared
from tunnelkeeper.cloudflared.versions import CloudflaredVersion, VersionError, is_outdated
from tunnelkeeper.config.model import CloudflaredConfig
from tunnelkeeper.supervise.supervisor import TunnelSupervisor

if TYPE_CHECKING:
    from tunnelkeeper.alerts import Condition

log = structlog.get_logger("tunnelkeeper.upgrade")


class Upgrader:
    def __init__(self, cloudflared: CloudflaredConfig, state_dir: Path) -> None:
        self.cloudflared = cloudflared
        self.state_dir = state_dir
        self.current: Path = cloudflared.path
        self.previous: Path | None = None
        self.failed: set[Path] = set()
        self.error: str | None = None
        self._switch_pending = False
        self._sups: Mapping[str, TunnelSupervisor] = {}

    def attach(self, sups: Mapping[str, TunnelSupervisor]) -> None:
        self._sups = sups
        for sup in sups.values():
            self.adopt_supervisor(sup)

    def adopt_supervisor(self, sup: TunnelSupervisor) -> None:
        sup.binary = self.current
        sup.on_upgrade_failed = self.canary_failed

    async def prepare(self, cloudflared: CloudflaredConfig) -> None:
        """Make the configured binary available (install it if managed) and roll to it."""
        self.cloudflared = cloudflared
        target = cloudflared.path
        if cloudflared.install is not None:
            try:
                result = await asyncio.to_thread(
                    install_cloudflared, cloudflared, self.state_dir, switch=False
                )
            except InstallError as exc:
                self.error = str(exc)
                log.error("cloudflared_install_failed", error=str(exc), keeping=str(self.current))
                return
            target = result.binary
        self.error = None
        self.roll_to(target)

    def roll_to(self, target: Path) -> None:
        if target == self.current:
            return
        if target in self.failed:
            log.warning(
                "upgrade_not_retried",
                binary=str(target),
                reason="its canary failed before; name another version to try again",
            )
            return
        self.previous, self.current = self.current, target
        self._switch_pending = self.cloudflared.install is not None
        log.info("upgrade_started", binary=str(target), previous=str(self.previous))
        for sup in self._sups.values():
            sup.binary = target
            sup.wake.set()

    def canary_failed(self, binary: Path) -> None:
        if binary != self.current or self.previous is None:
            return
        self.failed.add(binary)
        log.error("upgrade_rolled_back", failed=str(binary), back_to=str(self.previous))
        self.current, self.previous = self.previous, None
        self._switch_pending = False
        for sup in self._sups.values():
            sup.binary = self.current
            sup.wake.set()

    async def tick(self) -> None:
        """Once every replica runs the new binary, point ``cloudflared.path`` at it."""
        if not self._switch_pending or self.cloudflared.install is None:
            return
        if not all(sup.rollout_state() == "done" for sup in self._sups.values()):
            return
        self._switch_pending = False
        try:
            await asyncio.to_thread(install_cloudflared, self.cloudflared, self.state_dir)
            log.info("upgrade_completed", binary=str(self.current))
        except InstallError as exc:
            log.error("cloudflared_switch_failed", error=str(exc))

    def conditions(self) -> list[Condition]:
        from tunnelkeeper.alerts import Condition  # alerting loads after the replicas start

        out = []
        install = self.cloudflared.install
        for sup in self._sups.values():
            if install is not None and any(
                p.name == install.version for p in (b.parent for b in self.failed)
            ):
                out.append(
                    Condition(
                        "CloudflaredUpgradeFailed",
                        {"tunnel": sup.cfg.name},
                        details={"version": install.version},
                    )
                )
            versions = {r.version for r in sup.replicas.values() if r.version}
            wanted = install.version if install is not None else None
            for v in sorted(versions):
                if outdated(v, wanted, datetime.now(UTC)):
                    out.append(
                        Condition(
                            "CloudflaredOutdated",
                            {"tunnel": sup.cfg.name},
                            details={
                                "version": v,
                                "wanted": wanted or "a release from the last year",
                            },
                        )
                    )
                    break
        return out


def outdated(version: str, wanted: str | None, now: datetime) -> bool:
    try:
        running = CloudflaredVersion.parse(version)
        newest = CloudflaredVersion.parse(wanted) if wanted else None
    except VersionError:
        return False
    if newest is not None and newest < running:
        newest = running
    return is_outdated(running, newest, now)
