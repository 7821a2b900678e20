"""The observing half of a tunnel's supervisor: what each replica's probe, exit and resource
usage say, turned into the replica records the policy decides on, and into metrics.

A mixin of :class:`~tunnelkeeper.supervise.supervisor.TunnelSupervisor` (which acts); both work
on the supervisor's own state, from the daemon's single loop. How and when each replica is
probed is :mod:`.probing`'s, whose answers land here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from tunnelkeeper.config.model import DaemonConfig, TunnelConfig
from tunnelkeeper.metrics import Metrics
from tunnelkeeper.supervise import policy
from tunnelkeeper.supervise.backoff import backoff_seconds
from tunnelkeeper.supervise.policy import Phase, Role
from tunnelkeeper.supervise.ports import PortAllocator
from tunnelkeeper.supervise.probe import Prober
from tunnelkeeper.supervise.probing import Probing
from tunnelkeeper.supervise.procstat import usage
from tunnelkeeper.supervise.records import Replica, SlotState
from tunnelkeeper.supervise.replica import ReplicaProcess
from tunnelkeeper.supervise.stops import child_stop_change
from tunnelkeeper.tunneltoken import TunnelToken

EXIT_BACKOFF_CAP_SECONDS = 30.0
# A replica ready this long before it exits is not part of a crash loop.
STABLE_SECONDS = 5.0


class Observation(Probing):
    cfg: TunnelConfig
    daemon: DaemonConfig
    ports: PortAllocator
    prober: Prober
    metrics: Metrics
    wake: asyncio.Event
    clock: Callable[[], float]
    timing: policy.Timing
    replicas: dict[str, Replica]
    slots: list[SlotState]
    proven: TunnelToken | None
    token_refused: bool
    # what _export last set, per slot (and "tunnel"): a series is set again only on a change
    _exported: dict[int | str, tuple[object, ...]]
    _log: structlog.typing.FilteringBoundLogger

    if TYPE_CHECKING:  # provided by TunnelSupervisor and Rollout

        def _rotation_failed(self, r: Replica) -> None: ...
        def target_token(self) -> TunnelToken | None: ...

    def _wake_in(self, seconds: float) -> None:
        """Run the daemon's loop at a moment a replica's phase changes by time alone (silent or
        dark long enough), not at the next tick after it."""
        asyncio.get_running_loop().call_later(seconds, self.wake.set)

    def check_stops(self) -> None:
        """SIGCHLD: did one of our children stop or continue? (Cheap: one non-blocking
        ``waitid`` per child replica, only when the kernel signals a change.)"""
        for r in list(self.replicas.values()):
            if r.proc.is_our_child and r.proc.pid is not None:
                change = child_stop_change(r.proc.pid)
                if change is not None:
                    self._set_stopped(r, change)

    def _set_stopped(self, r: Replica, stopped: bool) -> None:
        if r.stopped == stopped:
            return
        r.stopped = stopped
        self._log.warning(
            "replica_stopped" if stopped else "replica_continued",
            slot=r.rid.slot,
            generation=r.rid.generation,
            pid=r.proc.pid,
        )
        self.wake.set()

    def on_exit(self, proc: ReplicaProcess) -> None:
        r = self.replicas.get(str(proc.rid))
        if r is not None:
            self._forget(r, exited=r.role is not Role.DRAINING, returncode=proc.returncode)

    def _forget(self, r: Replica, *, exited: bool, returncode: int | None) -> None:
        now = self.clock()
        self.replicas.pop(r.key, None)
        self.ports.release(r.proc.spec.metrics_port)
        self.prober.forget(r.proc.spec.metrics_port)
        slot_no = r.rid.slot
        if r.proc.bind_failed:
            self._log.warning(
                "metrics_port_taken",
                port=r.proc.spec.metrics_port,
                action="restarting on another port",
            )
        if slot_no < len(self.slots) and exited:
            slot = self.slots[slot_no]
            slot.last_exit = {
                "returncode": returncode,
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "errors": list(r.proc.recent_errors.lines),
                "cause": r.proc.relay.cause,
                "generation": r.rid.generation,
            }
            if r.ready_at is not None and now - r.ready_at >= STABLE_SECONDS:
                slot.exits.clear()  # it had been serving fine: a fresh failure, no backoff
            slot.exits.append(now)
            while slot.exits and now - slot.exits[0] > self.daemon.crash_loop_window_seconds:
                slot.exits.popleft()
            slot.backoff_until = now + backoff_seconds(
                len(slot.exits), cap_seconds=EXIT_BACKOFF_CAP_SECONDS
            )
            if r.role is Role.PRIMARY:
                slot.empty_reason = "exited"
            elif r.reason in ("rotation", "upgrade"):
                self._rotation_failed(r)
        self.wake.set()

    def crash_looping(self, slot: int) -> bool:
        """Too many exits within the window, and no replica in the slot serving steadily since
        (a recovered slot stops being "crash looping" without waiting for another exit)."""
        now = self.clock()
        state = self.slots[slot]
        window = self.daemon.crash_loop_window_seconds
        if sum(1 for t in state.exits if now - t <= window) < self.daemon.crash_loop_restarts:
            return False
        p = self.primary(slot)
        return not (p is not None and p.ready_at is not None and now - p.ready_at >= STABLE_SECONDS)

    def _export(self, now: float) -> None:
        """The tunnel's gauges, every tick; a series is set only when its value changed (the
        label lookups were most of a tick's cost at a hundred replicas)."""
        m, name = self.metrics, self.cfg.name
        ready = 0
        for slot in range(len(self.slots)):
            r = self.primary(slot)
            up = r is not None and r.proc.running
            conns = r.ready_connections if r is not None and not r.stale else 0
            ready += 1 if up and conns > 0 else 0
            phase = self.phase(r, now) if r is not None else Phase.EXITED
            values = (up, conns, self.crash_looping(slot), phase)
            if self._exported.get(slot) == values:
                continue
            self._exported[slot] = values
            m.replica_up.labels(name, str(slot)).set(1 if up else 0)
            m.replica_ready_connections.labels(name, str(slot)).set(conns)
            m.replica_crash_looping.labels(name, str(slot)).set(1 if values[2] else 0)
            for p in Phase:
                m.replica_state.labels(name, str(slot), p.value).set(1 if p is phase else 0)
        valid = self.target_token() is not None and not self.token_refused
        if self._exported.get("tunnel") != (ready, valid):
            self._exported["tunnel"] = (ready, valid)
            m.tunnel_ready_replicas.labels(name).set(ready)
            m.tunnel_token_valid.labels(name).set(1 if valid else 0)

    def _export_usage(self, r: Replica) -> None:
        """CPU and memory of a primary replica's process, every metrics interval."""
        if r.role is not Role.PRIMARY or r.proc.pid is None:
            return
        used = usage(r.proc.pid)
        if used is None:
            return  # gone: its exit is reported by the reaper
        labels = (self.cfg.name, str(r.rid.slot))
        self.metrics.replica_cpu_seconds.labels(*labels).set(used[0])
        self.metrics.replica_rss_bytes.labels(*labels).set(used[1])

    def ready_count(self) -> int:
        """Slots whose primary has at least one edge connection."""
        return sum(
            1
            for r in self.replicas.values()
            if r.role is Role.PRIMARY and r.rid.slot < len(self.slots) and r.is_serving
        )

    def primary(self, slot: int) -> Replica | None:
        return next(
            (r for r in self.replicas.values() if r.rid.slot == slot and r.role is Role.PRIMARY),
            None,
        )

    def phase(self, r: Replica, now: float) -> Phase:
        return policy.phase_of(r, self.timing, now)
