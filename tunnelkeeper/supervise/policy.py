"""The supervision decision, as pure functions of (desired, observed, now) → actions.

Nothing here does I/O or reads a clock. ``supervisor`` observes, calls :func:`decide`, and
carries the actions out. Rules, per tunnel and slot:

* A slot with no live primary gets one (after the slot's restart backoff).
* A primary that is UNHEALTHY (zero edge connections for ``unhealthy_after``), UNRESPONSIVE
  (metrics server silent), or never became ready in time, gets a *successor* (surge). The
  successor is promoted only once it is ready at the edge; then the old primary drains.
* A primary on an outdated token gets a successor too (rolling rotation), one slot at a time.
* A successor that is not ready within ``ready_timeout`` is abandoned; the slot backs off.
* A replica whose probe result is stale is UNKNOWN: not counted as serving, and not replaced
  on a guess (its probe task is restarted; see ``tasks``).
* When no replica of a tunnel has an edge connection, the edge or network is the likely fault:
  replacing everything would only churn, so one replacement at a time is tried, with backoff.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import NamedTuple, Protocol

from tunnelkeeper.structs import Struct


class Phase(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    UNRESPONSIVE = "unresponsive"
    DRAINING = "draining"
    EXITED = "exited"
    UNKNOWN = "unknown"  # its probe has produced no result for too long: never counted ready


class Role(StrEnum):
    PRIMARY = "primary"
    SUCCESSOR = "successor"
    DRAINING = "draining"


class Timing(Struct, frozen=True):
    unhealthy_after_seconds: float
    unresponsive_after_seconds: float
    ready_timeout_seconds: float
    min_ready_connections: int = 1
    ha_connections: int = 4


class Observed(NamedTuple):
    """What the supervisor knows about one live replica at ``now``. Immutable, and a tuple
    because one is built per replica two or three times a tick (a frozen dataclass took 2.5 µs
    to build, this 0.75: at a hundred replicas that was a tenth of the daemon's idle CPU)."""

    key: str  # unique id of the replica (str(ReplicaId))
    slot: int
    role: Role
    started_at: float
    running: bool
    ready_connections: int = 0
    ready_at: float | None = None  # first time it had an edge connection
    zero_since: float | None = None  # since when 0 connections, after having had some
    silent_since: float | None = None  # since when /ready has not answered
    token_fingerprint: str = ""
    stale: bool = False  # no fresh probe result: what it does now is not known
    stopped: bool = False  # stopped by a signal: serves nothing until continued
    reason: str = ""  # why it was started (a Spawn's reason)


class PhaseInputs(Protocol):
    """What :func:`phase_of` reads: an :class:`Observed` snapshot, or the supervisor's live
    record itself (asked per replica on every tick by the metrics and the alert conditions,
    where building a snapshot only to read a phase was most of the cost)."""

    @property
    def running(self) -> bool: ...
    @property
    def role(self) -> Role: ...
    @property
    def stopped(self) -> bool: ...
    @property
    def stale(self) -> bool: ...
    @property
    def started_at(self) -> float: ...
    @property
    def ready_connections(self) -> int: ...
    @property
    def ready_at(self) -> float | None: ...
    @property
    def zero_since(self) -> float | None: ...
    @property
    def silent_since(self) -> float | None: ...


def phase_of(r: PhaseInputs, t: Timing, now: float) -> Phase:
    if not r.running:
        return Phase.EXITED
    if r.role is Role.DRAINING:
        return Phase.DRAINING
    if r.stopped:
        return Phase.UNRESPONSIVE
    if r.stale:
        return Phase.UNKNOWN
    if r.silent_since is not None and now - r.silent_since >= t.unresponsive_after_seconds:
        # A starting replica's metrics server may not be up yet: silence only counts once it
        # has answered before, or when start-up has taken longer than it may.
        if r.ready_at is not None or now - r.started_at >= t.ready_timeout_seconds:
            return Phase.UNRESPONSIVE
    if r.ready_at is None:
        return Phase.STARTING if r.ready_connections == 0 else Phase.DEGRADED
    if r.ready_connections == 0:
        if r.zero_since is not None and now - r.zero_since >= t.unhealthy_after_seconds:
            return Phase.UNHEALTHY
        return Phase.DEGRADED
    if r.ready_connections < t.ha_connections:
        return Phase.DEGRADED
    return Phase.READY


# A serving replica gone dark gets its successor started this long before unhealthy_after runs
# out (at most half of it), so that the successor is ready at the edge when it does: the
# replacement then costs no start-up time beyond unhealthy_after. It takes over only once the
# primary has been dark for the whole of unhealthy_after, and is drained if the primary
# recovers first.
PRESTART_LEAD_SECONDS = 1.0


def prestart_after(t: Timing) -> float:
    """Seconds of darkness after which a serving replica's successor is started."""
    return t.unhealthy_after_seconds - min(PRESTART_LEAD_SECONDS, t.unhealthy_after_seconds / 2)


def _dark_long_enough_to_prestart(r: Observed, t: Timing, now: float) -> bool:
    return (
        r.ready_at is not None
        and r.ready_connections == 0
        and r.zero_since is not None
        and now - r.zero_since >= prestart_after(t)
    )


def is_serving(r: Observed) -> bool:
    return r.running and r.ready_connections > 0 and not r.stale and not r.stopped


def is_gate_ready(r: Observed, t: Timing) -> bool:
    """Ready at the edge enough to take over from the replica it replaces."""
    return (
        r.running
        and r.ready_connections >= t.min_ready_connections
        and not r.stale
        and not r.stopped
    )


# --- actions ---------------------------------------------------------------------------------


class Spawn(Struct, frozen=True):
    slot: int
    role: Role
    reason: str  # start | exited | no_connections | unresponsive | rotation | upgrade


class Promote(Struct, frozen=True):
    key: str  # the successor; the slot's current primary (if any) drains
    reason: str


class Drain(Struct, frozen=True):
    key: str
    reason: str


class Abandon(Struct, frozen=True):
    key: str  # a successor that never became ready
    reason: str


Action = Spawn | Promote | Drain | Abandon


class TunnelPlan(Struct, frozen=True):
    replicas: int
    # the token every replica should run; None: no usable token, nothing can start
    token_fingerprint: str | None
    slot_backoff_until: tuple[float, ...] = ()  # per slot
    last_exit_reason: tuple[str, ...] = ()  # per slot: why the slot is empty ("exited"/"start")
    storm_backoff_until: float = 0.0


class Decision(Struct, frozen=True):
    actions: tuple[Action, ...]
    edge_outage_suspected: bool
    reason: str | None  # human-readable explanation when the tunnel is held back


def _replacement_reason(phase: Phase) -> str | None:
    if phase is Phase.UNHEALTHY:
        return "no_connections"
    if phase is Phase.UNRESPONSIVE:
        return "unresponsive"
    return None


def decide(plan: TunnelPlan, replicas: Sequence[Observed], t: Timing, now: float) -> Decision:
    actions: list[Action] = []
    live = [r for r in replicas if r.running and r.role is not Role.DRAINING]
    primaries = {r.slot: r for r in live if r.role is Role.PRIMARY}
    successors = {r.slot: r for r in live if r.role is Role.SUCCESSOR}

    # Scale down: slots beyond the desired count drain.
    for r in live:
        if r.slot >= plan.replicas:
            actions.append(Drain(r.key, "scale_down"))

    serving = [r for r in primaries.values() if r.slot < plan.replicas and is_serving(r)]
    edge_outage = (
        bool(primaries)
        and not serving
        and any(
            phase_of(r, t, now) in (Phase.UNHEALTHY, Phase.STARTING, Phase.DEGRADED)
            and (r.ready_at is not None or now - r.started_at >= t.ready_timeout_seconds)
            for r in primaries.values()
        )
    )
    # While the whole tunnel is dark, at most one successor at a time, and not before backoff.
    surging = sum(1 for s in successors if s < plan.replicas)
    reason: str | None = None
    if edge_outage:
        reason = (
            "no replica has an edge connection: the edge or the network is likely down; "
            "replacing one replica at a time with backoff instead of restarting all"
        )
    rotating = any(r.token_fingerprint != plan.token_fingerprint for r in successors.values())

    for slot in range(plan.replicas):
        primary = primaries.get(slot)
        successor = successors.get(slot)
        backoff_until = (
            plan.slot_backoff_until[slot] if slot < len(plan.slot_backoff_until) else 0.0
        )
        if primary is None:
            if successor is not None:
                actions.append(Promote(successor.key, "replaced_exited"))
            elif plan.token_fingerprint is not None and now >= backoff_until:
                why = plan.last_exit_reason[slot] if slot < len(plan.last_exit_reason) else "start"
                actions.append(Spawn(slot, Role.PRIMARY, why))
            continue
        if successor is not None:
            superseded = (
                plan.token_fingerprint is not None
                and successor.token_fingerprint != plan.token_fingerprint
                and primary.token_fingerprint == plan.token_fingerprint
            )
            replacing_dark = successor.reason == "no_connections"
            if superseded:  # the roll it was for was called off (the source reverted)
                actions.append(Drain(successor.key, "superseded"))
            elif replacing_dark and is_serving(primary):
                actions.append(Drain(successor.key, "primary_recovered"))
            elif is_gate_ready(successor, t):
                if replacing_dark and phase_of(primary, t, now) is Phase.DEGRADED:
                    continue  # pre-started: it takes over once unhealthy_after has run out
                actions.append(Promote(successor.key, "successor_ready"))
            elif now - successor.started_at >= t.ready_timeout_seconds:
                actions.append(Abandon(successor.key, "not_ready_in_time"))
            continue
        if plan.token_fingerprint is None or now < backoff_until:
            continue
        phase = phase_of(primary, t, now)
        why_replace = _replacement_reason(phase)
        if why_replace is None and phase in (Phase.STARTING, Phase.DEGRADED):
            if primary.ready_at is None and now - primary.started_at >= t.ready_timeout_seconds:
                why_replace = "no_connections"
            elif _dark_long_enough_to_prestart(primary, t, now):
                why_replace = "no_connections"  # started early, see PRESTART_LEAD_SECONDS
        if why_replace is not None:
            if edge_outage and (surging > 0 or now < plan.storm_backoff_until):
                continue
            actions.append(Spawn(slot, Role.SUCCESSOR, why_replace))
            surging += 1
            continue
        wants_rotation = primary.token_fingerprint != plan.token_fingerprint
        if wants_rotation and not rotating and surging == 0 and not edge_outage:
            actions.append(Spawn(slot, Role.SUCCESSOR, "rotation"))
            rotating = True
            surging += 1
    return Decision(tuple(actions), edge_outage, reason)
