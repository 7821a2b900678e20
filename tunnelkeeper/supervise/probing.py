"""How and when a tunnel's replicas are probed: fast while one starts, at once when its log
hints at a change, and otherwise on the tunnel's beat, where one timer callback sends every
probe and each answer is handled in the wire's callback (no task wakes up per steady probe).

A mixin of :class:`~tunnelkeeper.supervise.observe.Observation`: :meth:`Probing._took` turns an
answer into the replica's record, which the supervisor's policy decides on.
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import structlog

from tunnelkeeper.config.model import DaemonConfig, TunnelConfig
from tunnelkeeper.metrics import Metrics
from tunnelkeeper.supervise import policy
from tunnelkeeper.supervise.policy import Role
from tunnelkeeper.supervise.probe import Prober, ReadyResult
from tunnelkeeper.supervise.procstat import is_stopped
from tunnelkeeper.supervise.records import Replica
from tunnelkeeper.tasks import until_beat
from tunnelkeeper.tunneltoken import TunnelToken

# a replica not yet ready is probed this often ...
STARTING_PROBE_SECONDS = 0.1
# ... for this long after its start; one not ready by then (no edge: a DNS outage, a refused
# dial) is probed on the regular beat, like the others
STARTING_FAST_SECONDS = 3.0
# a log line saying a connection was lost asks for a probe now, at most this often per replica
HINT_GAP_SECONDS = 0.25
# ... and once more this soon after, if the first one found it still connected (cloudflared may
# log the loss a moment before its /ready counts it)
HINT_FOLLOW_UP_SECONDS = 0.1
# A replica's start-up line ("Version ...") is written before it connects, but its log may be
# read just after the probe that finds it ready: /metrics is asked for the version only if the
# line has not been read this long after
VERSION_FROM_LOG_SECONDS = 3.0
# Tunnels are probed in this many groups spread over the probe interval: one burst of every
# probe at once would make the answers queue behind each other (probe latency) and the loop
# busy for the whole burst (its lag); one wake-up per replica would cost more CPU than the
# probes (see bench/README.md, "Probe wire").
PROBE_GROUPS = 4


class Probing:
    cfg: TunnelConfig
    daemon: DaemonConfig
    prober: Prober
    metrics: Metrics
    wake: asyncio.Event
    clock: Callable[[], float]
    timing: policy.Timing
    proven: TunnelToken | None
    # the replicas its beats probe (by key; see _probe_on_beats), and the next beat's timer
    _on_beats: dict[str, Replica]
    _beat_timer: asyncio.TimerHandle | None
    _log: structlog.typing.FilteringBoundLogger

    if TYPE_CHECKING:  # provided by Observation and TunnelSupervisor

        def _set_stopped(self, r: Replica, stopped: bool) -> None: ...
        def _wake_in(self, seconds: float) -> None: ...
        def _export_usage(self, r: Replica) -> None: ...
        def _start_task(self, coro: Coroutine[Any, Any, None], name: str) -> None: ...

    async def _probe_loop(self, r: Replica) -> None:
        """Probe ``r`` until its process ends: fast while it starts, after a hint, and then on
        its tunnel's beat, where the beat itself probes it (see :meth:`_probe_on_beats`)."""
        while r.proc.running:
            asked_at = self.clock()
            result = await self.prober.ready(r.proc.spec.metrics_port)
            seconds = self._took(r, result, asked_at)
            if seconds is None:
                seconds = await self._probe_on_beats(r)
            if seconds > 0:
                await self._nap(r, seconds)

    def _took(self, r: Replica, result: ReadyResult, asked_at: float) -> float | None:
        """What a probe's answer says about ``r``, on its record and in metrics; when to probe
        it next: in that many seconds, or None on the tunnel's beat."""
        now = self.clock()
        self.metrics.probe_duration.observe(now - asked_at)
        before = r.probe_view()
        r.probed_at, r.stale = now, False
        if result.answered:
            r.silent_since = None
            r.connector_id = result.connector_id or r.connector_id
            r.ready_connections = result.ready_connections
            if result.ready_connections > 0:
                if r.ready_at is None:
                    r.ready_at = now
                    self._log.info(
                        "replica_ready",
                        slot=r.rid.slot,
                        generation=r.rid.generation,
                        startup_seconds=round(now - r.started_at, 3),
                    )
                r.zero_since = None
                if r.role is not Role.DRAINING and r.proc.token.secret:
                    self.proven = r.proc.token
            elif r.zero_since is None and r.ready_at is not None:
                r.zero_since = now
                self._wake_in(policy.prestart_after(self.timing))  # its successor starts
                self._wake_in(self.cfg.unhealthy_after_seconds)  # UNHEALTHY at that moment
            self._set_stopped(r, False)
        else:
            if r.silent_since is None:
                r.silent_since = now
                self._wake_in(self.daemon.unresponsive_after_seconds)  # UNRESPONSIVE then
            if not r.stopped and r.proc.pid is not None and is_stopped(r.proc.pid):
                self._set_stopped(r, True)  # not slow but stopped: no need to wait
        if before != r.probe_view():
            self.wake.set()  # a change: decide now (time-based ones have their own timers)
        if result.answered and now - r.usage_at >= self.daemon.metrics_interval_seconds:
            r.usage_at = now
            if r.version is None:  # a process's version never changes
                r.version = r.proc.version  # from its start-up line
            if r.version is None and (
                r.proc.adopted
                or (r.ready_at is not None and now - r.ready_at >= VERSION_FROM_LOG_SECONDS)
            ):
                # not seen in its log (its start was before ours, or under a flood): asked
                self._ask_version(r)
            self._export_usage(r)
        hinted, r.hinted = r.hinted, False
        if hinted and r.ready_connections > 0:
            return HINT_FOLLOW_UP_SECONDS
        if r.ready_at is None and now - r.started_at < STARTING_FAST_SECONDS:
            return STARTING_PROBE_SECONDS
        return None

    def _ask_version(self, r: Replica) -> None:
        if r.asking_version:
            return
        r.asking_version = True

        async def ask() -> None:
            try:
                version = await self.prober.version(r.proc.spec.metrics_port)
            finally:
                r.asking_version = False
            r.version = r.version or version

        self._start_task(ask(), f"version {r.rid}")

    @property
    def probe_phase(self) -> float:
        """Where in the probe interval this tunnel's group is probed (stable per name)."""
        return (zlib.crc32(self.cfg.name.encode()) % PROBE_GROUPS) / PROBE_GROUPS

    async def _nap(self, r: Replica, seconds: float) -> None:
        """Wait ``seconds`` for the next probe, or less if a log hint cuts it short
        (:meth:`_probe_now`). Exits are reported by the pidfd at once."""
        loop = asyncio.get_running_loop()
        nap: asyncio.Future[float] = loop.create_future()
        r.nap = nap
        timer = loop.call_later(seconds, _settle, nap, 0.0)
        try:
            await nap
        finally:
            timer.cancel()
            r.nap = None

    async def _probe_on_beats(self, r: Replica) -> float:
        """Leave ``r`` to its tunnel's beats until one of its answers asks for another pace,
        a hint asks for a probe now (0), its process ends (0), or handling an answer raises
        (raised here, for the task's restart). Returns the seconds to wait before probing.

        At each beat, one timer callback sends every such replica's probe and each answer is
        handled in the wire's callback: per probe, no task wakes up and no nap is made (the
        task's two wake-ups and its nap were half of a steady probe's cost)."""
        loop = asyncio.get_running_loop()
        handback: asyncio.Future[float] = loop.create_future()
        r.nap = handback
        self._on_beats[r.key] = r
        if self._beat_timer is None:
            self._arm_beat(loop)
        try:
            return await handback
        finally:
            self._on_beats.pop(r.key, None)
            r.nap = None

    def _arm_beat(self, loop: asyncio.AbstractEventLoop) -> None:
        delay = until_beat(self.daemon.probe_interval_seconds, self.probe_phase)
        self._beat_timer = loop.call_later(delay, self._beat)

    def _beat(self) -> None:
        self._beat_timer = None
        if not self._on_beats:
            return
        asked_at = self.clock()
        for r in list(self._on_beats.values()):
            if not r.proc.running:
                self._hand_back(r, 0.0)  # its loop ends
                continue
            if r.beat_asked:
                continue  # the last beat's probe is still out (it times out at the latest now)
            r.beat_asked = True
            self.prober.ask_ready(
                r.proc.spec.metrics_port, functools.partial(self._beat_answer, r, asked_at)
            )
        if self._on_beats:
            self._arm_beat(asyncio.get_running_loop())

    def _beat_answer(self, r: Replica, asked_at: float, result: ReadyResult) -> None:
        r.beat_asked = False
        if self._on_beats.get(r.key) is not r or r.nap is None or r.nap.done():
            return  # handed back to its loop meanwhile (a hint): that loop probes it itself
        try:
            seconds = self._took(r, result, asked_at)
        except Exception as exc:  # for its loop's restart, as if it had raised there
            self._on_beats.pop(r.key, None)
            r.nap.set_exception(exc)
            return
        if seconds is not None:
            self._hand_back(r, seconds)

    def _hand_back(self, r: Replica, seconds: float) -> None:
        """End ``r``'s wait, on the beats or in a nap: its loop goes on in ``seconds``."""
        self._on_beats.pop(r.key, None)
        if r.nap is not None:
            _settle(r.nap, seconds)

    def _hinted(self, r: Replica) -> None:
        """cloudflared logged a lost or failed connection: probe it now (and once more shortly
        after, see the probe loop), if it is believed to be serving (one already known dark
        has nothing to tell: a flood of such lines costs no probe more than usual), at most
        once per HINT_GAP_SECONDS. A hint that comes while a probe is on its way makes the
        next one come soon (that probe may have been answered before the loss)."""
        if r.ready_connections == 0 or r.probed_at is None:
            return
        if self._probe_now(r):
            r.hinted = True

    def _registered(self, r: Replica) -> None:
        """cloudflared logged a new edge connection: a replica not known to have one (starting,
        or dark) is probed now, so that it counts as ready (READY=1, a successor's takeover)
        when it is, not up to a probe interval later. At most once per HINT_GAP_SECONDS."""
        if r.ready_connections == 0:
            self._probe_now(r)

    def _probe_now(self, r: Replica) -> bool:
        """Cut the replica's wait for its next probe short (a log line asked for it), at most
        once per HINT_GAP_SECONDS; False if one was asked too recently."""
        now = self.clock()
        if now - r.hinted_at < HINT_GAP_SECONDS:
            return False
        r.hinted_at = now
        self._hand_back(r, 0.0)  # napping, or left to the beats: its loop probes it now
        return True


def _settle(nap: asyncio.Future[float], seconds: float) -> None:
    if not nap.done():
        nap.set_result(seconds)
