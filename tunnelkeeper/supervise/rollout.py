"""Rolling a tunnel's replicas to a new spec — a new token (rotation), the same token again
(``rotate --force``), or a new cloudflared binary (upgrade) — one replica at a time, each new
one ready at the edge before the old one drains. A roll whose new replica never becomes ready
is stopped: the old replicas keep serving, and the same target is not retried in a loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import structlog

from tunnelkeeper.config.model import CloudflaredConfig, TunnelConfig
from tunnelkeeper.metrics import Metrics
from tunnelkeeper.supervise.identity import RunAs
from tunnelkeeper.supervise.policy import Role
from tunnelkeeper.supervise.records import Replica, SlotState, spec_id
from tunnelkeeper.tunneltoken import TunnelToken


class Rollout:
    """Mixin of TunnelSupervisor: the roll bookkeeping, on the supervisor's own state."""

    cfg: TunnelConfig
    cloudflared: CloudflaredConfig
    metrics: Metrics
    wake: asyncio.Event
    replicas: dict[str, Replica]
    slots: list[SlotState]
    desired: TunnelToken | None
    failed_fingerprints: set[str]
    rotation_target: str | None
    epoch: int
    rollout_failures: int
    binary: Path
    run_as: RunAs | None
    on_upgrade_failed: Callable[[Path], None] | None
    _log: structlog.typing.FilteringBoundLogger

    def target_token(self) -> TunnelToken | None:
        raise NotImplementedError

    def spec_for(self, token: TunnelToken | None) -> str | None:
        if token is None:
            return None
        uid = self.run_as.uid if self.run_as is not None else None
        return spec_id(token.fingerprint, self.epoch, self.binary, self.cloudflared.args, uid)

    def roll_reason(self, slot: int, token: TunnelToken) -> str:
        """Why a slot's primary is being replaced by a roll: "upgrade" when only the binary
        differs, else "rotation" (a new token, or a forced roll)."""
        primary = next(
            (r for r in self.replicas.values() if r.rid.slot == slot and r.role is Role.PRIMARY),
            None,
        )
        if (
            primary is not None
            and primary.proc.token.fingerprint == token.fingerprint
            and primary.proc.spec.binary != self.binary
        ):
            return "upgrade"
        return "rotation"

    def force_roll(self) -> None:
        """Roll every replica even though its token is current (``rotate --force``)."""
        self.epoch += 1
        self.wake.set()

    def rollout_state(self) -> str:
        """ "rolling" while a primary is behind the target or a successor is up, else "done"."""
        spec = self.spec_for(self.target_token())
        primaries = [r for r in self.replicas.values() if r.role is Role.PRIMARY]
        if any(r.role is Role.SUCCESSOR for r in self.replicas.values()):
            return "rolling"
        if len(primaries) < len(self.slots) or any(r.spec_id != spec for r in primaries):
            return "rolling"
        return "done" if all(r.ready_at is not None for r in primaries) else "rolling"

    def _track_rotation(self, token: TunnelToken | None) -> None:
        spec = self.spec_for(token)
        if spec is None or token is None:
            return
        primaries = [r for r in self.replicas.values() if r.role is Role.PRIMARY]
        behind = [r for r in primaries if r.spec_id != spec]
        if self.rotation_target not in (None, spec) and self.rollout_state() == "done":
            # the target moved back (the source reverted) before the roll got anywhere
            self._log.info("roll_superseded", token=token.fingerprint)
            self.rotation_target = None
        if behind and self.rotation_target != spec and all(r.ready_at for r in primaries):
            self.rotation_target = spec
            self._log.info(
                "roll_started",
                token=token.fingerprint,
                binary=str(self.binary),
                replicas=len(behind),
            )
        elif self.rotation_target == spec and self.rollout_state() == "done":
            self.rotation_target = None
            if any(r.proc.token.fingerprint != token.fingerprint for r in behind) or not behind:
                self.metrics.token_rotations.labels(self.cfg.name, "success").inc()
            self._log.info("roll_completed", token=token.fingerprint, binary=str(self.binary))

    def _rotation_failed(self, r: Replica) -> None:
        """A rolled-in successor never became ready: keep the old replicas, and never retry
        the same target in a loop."""
        fp = r.proc.token.fingerprint
        primaries = [p for p in self.replicas.values() if p.role is Role.PRIMARY]
        self.rotation_target = None
        if primaries and all(p.proc.spec.binary != r.proc.spec.binary for p in primaries):
            self._log.error(
                "upgrade_canary_failed",
                binary=str(r.proc.spec.binary),
                reason="the new cloudflared did not become ready at the edge in time",
            )
            if self.on_upgrade_failed is not None:
                self.on_upgrade_failed(r.proc.spec.binary)
            return
        if any(p.proc.token.fingerprint == fp for p in primaries):
            self.epoch = max(p.epoch for p in primaries)  # a forced roll failed: stand down
        elif fp in self.failed_fingerprints:
            return
        else:
            self.failed_fingerprints.add(fp)
        self.rollout_failures += 1
        self.metrics.token_rotations.labels(self.cfg.name, "failed").inc()
        self._log.error(
            "rotation_failed",
            token=fp,
            reason="new replica did not become ready at the edge in time",
        )
