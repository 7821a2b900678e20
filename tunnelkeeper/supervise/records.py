"""What the supervisor remembers about each replica and each slot."""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tunnelkeeper.supervise.launch import ReplicaId
from tunnelkeeper.supervise.policy import Observed, Role
from tunnelkeeper.supervise.replica import ReplicaProcess


@functools.lru_cache(maxsize=1024)  # asked for every replica on every tick
def spec_id(
    token_fingerprint: str,
    epoch: int,
    binary: Path,
    args: tuple[str, ...],
    run_as_uid: int | None = None,
) -> str:
    args_id = hashlib.sha256("\0".join(args).encode()).hexdigest()[:8]
    return f"{token_fingerprint}:{epoch}:{binary}:{args_id}:{run_as_uid or ''}"


@dataclass
class Replica:
    rid: ReplicaId
    proc: ReplicaProcess
    role: Role
    reason: str
    started_at: float
    started_wall: datetime
    ready_connections: int = 0
    connector_id: str | None = None
    ready_at: float | None = None
    zero_since: float | None = None
    silent_since: float | None = None
    version: str | None = None
    epoch: int = 0  # bumped by a forced roll: same token, new processes
    probed_at: float | None = None  # when its probe last produced a result (None: not yet)
    stale: bool = False  # set by the supervisor: no probe result for too long
    stopped: bool = False  # stopped by a signal (see supervise/stops.py)
    # the probe loop's wait between probes (a nap, or its time on the tunnel's beats), which
    # a log hint cuts short; its result is the seconds to wait still (None: probing now)
    nap: asyncio.Future[float] | None = field(default=None, repr=False, compare=False)
    hinted: bool = False  # a log line asked for a probe since the last one began
    hinted_at: float = -1e18
    beat_asked: bool = False  # a beat's probe of it is out
    usage_at: float = -1e18  # when its CPU and memory were last exported
    asking_version: bool = False  # /metrics is being asked for its version

    @property
    def running(self) -> bool:
        return self.proc.running

    @property
    def is_serving(self) -> bool:
        """Running with at least one edge connection, as of a fresh probe."""
        return (
            self.proc.running and self.ready_connections > 0 and not self.stale and not self.stopped
        )

    def mark_staleness(self, now: float, stale_after_seconds: float) -> None:
        since = self.probed_at if self.probed_at is not None else self.started_at
        self.stale = now - since > stale_after_seconds

    @functools.cached_property
    def key(self) -> str:
        return str(self.rid)  # rid never changes

    @property
    def spec_id(self) -> str:
        """What the replica runs: token, forced-roll epoch, binary and extra arguments. A
        primary whose spec differs from the tunnel's target is rolled (rotation, forced roll,
        upgrade, changed arguments)."""
        return spec_id(
            self.proc.token.fingerprint,
            self.epoch,
            self.proc.spec.binary,
            self.proc.spec.extra_args,
            self.proc.spec.run_as.uid if self.proc.spec.run_as else None,
        )

    def probe_view(self) -> tuple[object, ...]:
        """What a probe can change of :meth:`observed` (compared before and after each probe:
        building an Observed twice per probe was a tenth of the daemon's CPU)."""
        return (
            self.ready_connections,
            self.ready_at,
            self.zero_since,
            self.silent_since,
            self.stale,
            self.stopped,
        )

    def observed(self) -> Observed:
        return Observed(
            key=self.key,
            slot=self.rid.slot,
            role=self.role,
            started_at=self.started_at,
            running=self.proc.running,
            ready_connections=self.ready_connections,
            ready_at=self.ready_at,
            zero_since=self.zero_since,
            silent_since=self.silent_since,
            token_fingerprint=self.spec_id,
            stale=self.stale,
            stopped=self.stopped,
            reason=self.reason,
        )


@dataclass
class SlotState:
    generation: int = 0
    exits: deque[float] = field(default_factory=deque)
    backoff_until: float = 0.0
    empty_reason: str = "start"
    restarts: int = 0
    last_exit: dict[str, object] | None = None
