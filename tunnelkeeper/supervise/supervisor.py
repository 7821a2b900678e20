"""Per-tunnel supervision: observe replicas (:mod:`.observe`), ask :mod:`.policy` what to do,
do it (here).

Each replica's /ready is polled (by its own probe task while it starts or after a log hint,
then by its tunnel's beat every ``probe_interval_seconds``: see probing.py) and the daemon
loop is woken when something changes; exits wake it at once. ``converge`` is called from that
single loop, so state has one writer.

Over 300 lines because the acting half of the supervisor (the observing half is observe.py, the
roll bookkeeping rollout.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from tunnelkeeper.config.model import CloudflaredConfig, DaemonConfig, TunnelConfig
from tunnelkeeper.metrics import Metrics
from tunnelkeeper.supervise import policy
from tunnelkeeper.supervise.identity import RunAs
from tunnelkeeper.supervise.launch import ReplicaId, spawn_spec
from tunnelkeeper.supervise.observe import Observation
from tunnelkeeper.supervise.policy import Abandon, Drain, Promote, Role, Spawn
from tunnelkeeper.supervise.ports import PortAllocator
from tunnelkeeper.supervise.probe import Prober
from tunnelkeeper.supervise.records import Replica, SlotState
from tunnelkeeper.supervise.replica import ReplicaProcess
from tunnelkeeper.supervise.rollout import Rollout
from tunnelkeeper.tasks import keep_running
from tunnelkeeper.tunneltoken import TunnelToken

STORM_BACKOFF_CAP_SECONDS = 300.0
PROBE_TIMEOUT_SECONDS = 1.0  # the daemon's prober never waits longer for one /ready

log = structlog.get_logger("tunnelkeeper.supervisor")


class TunnelSupervisor(Observation, Rollout):
    def __init__(
        self,
        cfg: TunnelConfig,
        daemon: DaemonConfig,
        cloudflared: CloudflaredConfig,
        *,
        ports: PortAllocator,
        prober: Prober,
        metrics: Metrics,
        wake: asyncio.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.daemon = daemon
        self.cloudflared = cloudflared
        self.ports, self.prober, self.metrics, self.wake, self.clock = (
            ports,
            prober,
            metrics,
            wake,
            clock,
        )
        self.timing = self._timing()
        self.replicas: dict[str, Replica] = {}
        self.slots = [SlotState() for _ in range(cfg.replicas)]
        self.desired: TunnelToken | None = None  # newest valid token from the source
        self.proven: TunnelToken | None = None  # last token a replica became ready with
        self.failed_fingerprints: set[str] = set()
        self.rotation_target: str | None = None
        self.epoch = 0
        self._exported = {}
        self._on_beats = {}
        self._beat_timer = None
        self.rollout_failures = 0
        self.binary: Path = cloudflared.path  # what new replicas run (see upgrade)
        self.run_as: RunAs | None = None  # who new replicas run as (see identity)
        self.on_upgrade_failed: Callable[[Path], None] | None = None
        self.storm_backoff_until = 0.0
        self.storm_attempts = 0
        self.edge_outage = False
        self.hold_reason: str | None = None
        self.token_source_description = ""
        self.token_error: str | None = None  # why the source has no usable (new) token
        self.token_refused = False  # what the source holds now was refused
        self._tasks: set[asyncio.Task[None]] = set()
        self._log = log.bind(tunnel=cfg.name)
        metrics.tunnel_desired_replicas.labels(cfg.name).set(cfg.replicas)
        metrics.declare_tunnel(cfg.name, cfg.expected_connectors)

    def _timing(self) -> policy.Timing:
        return policy.Timing(
            unhealthy_after_seconds=self.cfg.unhealthy_after_seconds,
            unresponsive_after_seconds=self.daemon.unresponsive_after_seconds,
            ready_timeout_seconds=self.daemon.ready_timeout_seconds,
            min_ready_connections=self.cfg.min_ready_connections,
            ha_connections=_ha_connections(self.cloudflared.args),
        )

    def reconfigure(self, cfg: TunnelConfig, cloudflared: CloudflaredConfig) -> None:
        """Apply a reloaded config: more slots start, fewer drain (surge/drain as usual), new
        timings apply at once, new cloudflared args roll the replicas."""
        self.cfg, self.cloudflared = cfg, cloudflared
        self.timing = self._timing()
        while len(self.slots) < cfg.replicas:
            self.slots.append(SlotState())
        for slot in range(cfg.replicas, len(self.slots)):
            self.metrics.forget_slot(cfg.name, str(slot))
            self._exported.pop(slot, None)
        del self.slots[cfg.replicas :]
        self.metrics.tunnel_desired_replicas.labels(cfg.name).set(cfg.replicas)
        self.wake.set()

    # --- tokens ---------------------------------------------------------------------------

    def set_token(self, token: TunnelToken, *, force: bool = False) -> None:
        if force:
            self.failed_fingerprints.discard(token.fingerprint)
        if self.desired is not None and token.fingerprint == self.desired.fingerprint:
            return
        self.desired = token
        if self.proven is None:
            self.proven = token
        self._log.info("token_accepted", token=token.fingerprint)
        self.wake.set()

    def target_token(self) -> TunnelToken | None:
        """The token replicas should run: the newest, unless it already failed a rotation."""
        if self.desired is not None and self.desired.fingerprint not in self.failed_fingerprints:
            return self.desired
        return self.proven

    # --- the loop body --------------------------------------------------------------------

    def converge(self) -> None:
        now = self.clock()
        token = self.target_token()
        plan = policy.TunnelPlan(
            replicas=self.cfg.replicas,
            token_fingerprint=self.spec_for(token),
            slot_backoff_until=tuple(s.backoff_until for s in self.slots),
            last_exit_reason=tuple(s.empty_reason for s in self.slots),
            storm_backoff_until=self.storm_backoff_until,
        )
        stale_after = 3 * self.daemon.probe_interval_seconds + PROBE_TIMEOUT_SECONDS
        for r in self.replicas.values():
            was_stale = r.stale
            r.mark_staleness(now, stale_after)
            if r.stale and not was_stale:
                self._log.error(
                    "replica_probe_stale",
                    slot=r.rid.slot,
                    generation=r.rid.generation,
                    seconds=round(stale_after, 1),
                    consequence="state unknown: not counted ready until its probe answers",
                )
        observed = [r.observed() for r in self.replicas.values()]
        decision = policy.decide(plan, observed, self.timing, now)
        self.edge_outage, self.hold_reason = decision.edge_outage_suspected, decision.reason
        for action in decision.actions:
            self._apply(action, token, now)
        self._track_rotation(token)
        self._export(now)

    def _apply(self, action: policy.Action, token: TunnelToken | None, now: float) -> None:
        if isinstance(action, Spawn):
            if token is not None:
                reason = action.reason
                if reason == "rotation":
                    reason = self.roll_reason(action.slot, token)
                self._spawn(action.slot, action.role, reason, token, now)
        elif isinstance(action, Promote):
            new = self.replicas[action.key]
            old = next(
                (
                    r
                    for r in self.replicas.values()
                    if r.rid.slot == new.rid.slot and r.role is Role.PRIMARY
                ),
                None,
            )
            new.role = Role.PRIMARY
            if old is not None:
                self._drain(old, new.reason)
            self._log.info(
                "replica_promoted",
                slot=new.rid.slot,
                generation=new.rid.generation,
                reason=new.reason,
            )
        elif isinstance(action, Drain):
            self._drain(self.replicas[action.key], action.reason)
        elif isinstance(action, Abandon):
            r = self.replicas[action.key]
            slot = self.slots[r.rid.slot]
            slot.backoff_until = now + max(self.cfg.unhealthy_after_seconds, 5.0)
            if self.edge_outage:
                self.storm_attempts += 1
                self.storm_backoff_until = now + min(
                    STORM_BACKOFF_CAP_SECONDS,
                    self.cfg.unhealthy_after_seconds * 2.0**self.storm_attempts,
                )
            if r.reason in ("rotation", "upgrade"):
                self._rotation_failed(r)
            self._log.warning(
                "replica_abandoned",
                slot=r.rid.slot,
                generation=r.rid.generation,
                reason=action.reason,
                replacing=r.reason,
            )
            self._drain(r, "abandoned")

    def _spawn(self, slot: int, role: Role, reason: str, token: TunnelToken, now: float) -> None:
        state = self.slots[slot]
        state.generation += 1
        rid = ReplicaId(self.cfg.name, slot, state.generation)
        try:
            port = self.ports.allocate()
        except OSError as exc:  # out of descriptors or ports: try again after the backoff
            state.backoff_until = now + max(1.0, self.daemon.probe_interval_seconds)
            self._log.error("replica_spawn_failed", slot=slot, error=exc.strerror or str(exc))
            return
        spec = spawn_spec(
            self.daemon,
            self.cloudflared,
            self.cfg,
            slot,
            binary=self.binary,
            metrics_port=port,
            run_as=self.run_as,
        )
        proc = ReplicaProcess(rid, spec, token, self.on_exit)
        self._wire(proc)
        replica = Replica(rid, proc, role, reason, now, datetime.now(UTC), epoch=self.epoch)
        self.replicas[replica.key] = replica
        if reason in ("exited", "no_connections", "unresponsive", "rotation", "upgrade"):
            state.restarts += 1
            self.metrics.replica_restarts.labels(self.cfg.name, str(slot), reason).inc()
        # Spawned here, synchronously (a fork/exec), so the daemon's ledger, written right
        # after this converge, already lists it: a daemon killed now leaves no orphan.
        try:
            proc.start()
        except OSError as exc:
            self._log.error(
                "replica_spawn_failed", slot=slot, error=str(exc), binary=str(self.binary)
            )
            self._forget(replica, exited=True, returncode=None)
            return
        self._start_probe(replica)

    def _wire(self, proc: ReplicaProcess) -> None:
        proc.on_skipped = self.metrics.child_log_skipped.labels(
            self.cfg.name, str(proc.rid.slot)
        ).inc
        proc.on_unread = self.metrics.child_log_unread.labels(self.cfg.name, str(proc.rid.slot)).inc

        def to_record(handle: Callable[[Replica], None]) -> Callable[[], None]:
            """A log event of this process, for its record (if it is still this process's)."""

            def deliver() -> None:
                r = self.replicas.get(str(proc.rid))
                if r is not None and r.proc is proc:
                    handle(r)

            return deliver

        proc.on_hint = to_record(self._hinted)
        proc.on_registered = to_record(self._registered)

    def take(self, r: Replica) -> None:
        """Supervise a replica that already runs (adopted from a previous daemon)."""
        self._wire(r.proc)
        self.replicas[r.key] = r
        self.ports.claim(r.proc.spec.metrics_port)
        if r.rid.slot < len(self.slots):
            slot = self.slots[r.rid.slot]
            slot.generation = max(slot.generation, r.rid.generation)
        if self.proven is None and r.proc.token.secret:  # not an unknown (adopted) token
            self.proven = r.proc.token
        if r.role is Role.DRAINING:
            self._start_task(r.proc.stop(signal_first=False), f"drain {r.rid}")
        self._start_probe(r)

    def _drain(self, r: Replica, reason: str) -> None:
        if r.role is Role.DRAINING:
            return
        r.role = Role.DRAINING
        self._log.info(
            "replica_draining",
            slot=r.rid.slot,
            generation=r.rid.generation,
            reason=reason,
            pid=r.proc.pid,
        )
        self._start_task(r.proc.stop(), f"drain {r.rid}")

    # --- lifecycle ---------------------------------------------------------------------------

    def _start_probe(self, r: Replica) -> None:
        if r.ready_at is None:  # act at its ready timeout, not at the tick after it
            self._wake_in(self.timing.ready_timeout_seconds)
        run = keep_running(
            "probe",
            lambda: self._probe_loop(r),
            self.metrics,
            pause_seconds=self.daemon.probe_interval_seconds,
            while_=lambda: r.proc.running,
            tunnel=self.cfg.name,
            slot=r.rid.slot,
        )
        self._start_task(run, f"probe {r.rid}")

    def _start_task(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def release_all(self) -> None:
        """Stop supervising, leave every replica running (handover to the next daemon)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for r in self.replicas.values():
            await r.proc.detach()

    async def drain_all(self) -> None:
        """Drain every replica (SIGTERM, grace, SIGKILL) and wait until all have exited."""
        for r in list(self.replicas.values()):
            self._drain(r, "shutdown")
        await asyncio.gather(*(r.proc.exited.wait() for r in list(self.replicas.values())))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _ha_connections(args: tuple[str, ...]) -> int:
    for i, a in enumerate(args):
        if a.startswith("--ha-connections="):
            value = a.split("=", 1)[1]
        elif a == "--ha-connections" and i + 1 < len(args):
            value = args[i + 1]
        else:
            continue
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 4
