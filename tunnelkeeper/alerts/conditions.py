"""What is wrong right now, as alert conditions: a pure reading of the supervisors' state.

The alert engine decides when a condition has held long enough to page, and when it is over.
"""

from __future__ import annotations

from collections.abc import Iterable

from tunnelkeeper.alerts import Condition
from tunnelkeeper.logconfig import SECRETS
from tunnelkeeper.supervise.policy import Phase, Role
from tunnelkeeper.supervise.records import Replica
from tunnelkeeper.supervise.supervisor import TunnelSupervisor


def tunnel_conditions(
    sup: TunnelSupervisor, now: float, *, source_unavailable: bool
) -> list[Condition]:
    name = sup.cfg.name
    out: list[Condition] = []
    ready = 0
    for slot in range(len(sup.slots)):
        labels = {"tunnel": name, "slot": str(slot)}
        primary = sup.primary(slot)
        if sup.crash_looping(slot):
            last = sup.slots[slot].last_exit or {}
            out.append(
                Condition(
                    "ReplicaCrashLooping",
                    labels,
                    details=_with_cause(
                        {
                            "exits_in_window": str(len(sup.slots[slot].exits)),
                            "last_returncode": str(last.get("returncode")),
                        },
                        slot_cause(sup, slot),
                    ),
                )
            )
        down = _down_reason(sup, slot, primary, now)
        if down is not None:
            if sup.target_token() is not None:  # without a token, TunnelDown says it all
                details = _with_cause({"reason": down}, slot_cause(sup, slot))
                out.append(Condition("ReplicaDown", labels, details=details))
            continue
        assert primary is not None
        if primary.is_serving:
            ready += 1
            continue
        if primary.stale:
            continue  # not known to serve (so not counted ready), not known to be dark
        started_long_ago = now - primary.started_at >= sup.daemon.ready_timeout_seconds
        if primary.ready_at is not None or started_long_ago:
            # A successor being started for it does not make it better for on-call.
            out.append(
                Condition(
                    "ReplicaNoEdgeConnections",
                    labels,
                    details=_with_cause(
                        {
                            "replacement_in_progress": str(
                                any(
                                    r.rid.slot == slot and r.role is Role.SUCCESSOR
                                    for r in sup.replicas.values()
                                )
                            ).lower(),
                        },
                        slot_cause(sup, slot),
                    ),
                )
            )
    desired = len(sup.slots)
    tunnel = {"tunnel": name}
    if desired and ready == 0:
        detail = {
            "reason": sup.hold_reason or sup.token_error or "no replica has an edge connection"
        }
        causes = (slot_cause(sup, s) for s in range(len(sup.slots)))
        detail = _with_cause(detail, next((c for c in causes if c), None))
        out.append(Condition("TunnelDown", tunnel, details=detail))
    elif ready < desired:
        out.append(
            Condition(
                "TunnelDegraded", tunnel, details={"ready": str(ready), "desired": str(desired)}
            )
        )
    if sup.desired is not None and sup.desired.fingerprint in sup.failed_fingerprints:
        out.append(
            Condition("TokenRotationFailed", tunnel, details={"token": sup.desired.fingerprint})
        )
    if source_unavailable:
        out.append(
            Condition(
                "TokenSourceUnavailable", tunnel, details={"error": sup.token_error or "unknown"}
            )
        )
    return out


MAX_CAUSE_CHARS = 300


def slot_cause(sup: TunnelSupervisor, slot: int) -> str | None:
    """The last distinct error cloudflared logged for the slot: its running replica's, else
    the last exited one's."""
    for r in sorted(sup.replicas.values(), key=lambda r: -r.rid.generation):
        if r.rid.slot != slot:
            continue
        if not r.proc.relay.cause:
            r.proc.catch_up()  # only while something is wrong with the slot: cheap
        if r.proc.relay.cause:
            return r.proc.relay.cause
    last = sup.slots[slot].last_exit if slot < len(sup.slots) else None
    if last and isinstance(last.get("cause"), str):
        return str(last["cause"])
    errors = (last or {}).get("errors") or []
    return str(errors[-1]) if isinstance(errors, list) and errors else None


def _with_cause(details: dict[str, str], cause: str | None) -> dict[str, str]:
    if cause:
        text = SECRETS.scrub(cause)
        if len(text) > MAX_CAUSE_CHARS:
            text = text[:MAX_CAUSE_CHARS] + "…"
        details = {**details, "cause": text}
    return details


def all_conditions(parts: Iterable[list[Condition]]) -> list[Condition]:
    return [c for part in parts for c in part]


def _down_reason(
    sup: TunnelSupervisor, slot: int, primary: Replica | None, now: float
) -> str | None:
    """Why the slot has no serving replica because of its process (not the edge), or None.

    A slot whose replica died is down until a replacement is ready at the edge, not merely until
    one is spawned (up to ready_timeout); a hung replica (metrics server silent) is down too.
    """
    if primary is None or not primary.proc.running:
        return "not running"
    if sup.phase(primary, now) is Phase.UNRESPONSIVE:
        return "unresponsive"
    starting_for = now - primary.started_at
    if (
        primary.ready_at is None
        and sup.slots[slot].empty_reason == "exited"
        and starting_for < sup.daemon.ready_timeout_seconds
    ):
        # (a restart that has run past ready_timeout without connecting is an edge problem:
        # ReplicaNoEdgeConnections below says so)
        return "restarting after an exit"
    return None
