"""The supervision decision as a pure function: explicit now, no processes."""

from __future__ import annotations

from tunnelkeeper.supervise.policy import (
    Abandon,
    Drain,
    Observed,
    Phase,
    Promote,
    Role,
    Spawn,
    Timing,
    TunnelPlan,
    decide,
    phase_of,
    prestart_after,
)

T = Timing(unhealthy_after_seconds=20, unresponsive_after_seconds=3, ready_timeout_seconds=60)
SPEC = "tok:0"


def rep(
    slot: int,
    *,
    role: Role = Role.PRIMARY,
    conns: int = 4,
    ready_at: float | None = 0.0,
    zero_since: float | None = None,
    silent_since: float | None = None,
    started_at: float = 0.0,
    spec: str = SPEC,
    gen: int = 1,
    running: bool = True,
) -> Observed:
    return Observed(
        f"t/{slot}#{gen}",
        slot,
        role,
        started_at,
        running,
        conns,
        ready_at,
        zero_since,
        silent_since,
        spec,
    )


def plan(n: int = 2, spec: str | None = SPEC, **kw: object) -> TunnelPlan:
    return TunnelPlan(replicas=n, token_fingerprint=spec, **kw)  # type: ignore[arg-type]


def test_empty_tunnel_starts_every_slot() -> None:
    d = decide(plan(3), [], T, now=0)
    assert d.actions == (
        Spawn(0, Role.PRIMARY, "start"),
        Spawn(1, Role.PRIMARY, "start"),
        Spawn(2, Role.PRIMARY, "start"),
    )


def test_nothing_starts_without_a_token() -> None:
    assert decide(plan(2, spec=None), [], T, now=0).actions == ()


def test_healthy_tunnel_needs_nothing() -> None:
    assert decide(plan(2), [rep(0), rep(1)], T, now=100).actions == ()


def test_exited_slot_respawns_after_its_backoff_only() -> None:
    p = plan(2, slot_backoff_until=(0.0, 105.0), last_exit_reason=("start", "exited"))
    assert decide(p, [rep(0)], T, now=100).actions == ()
    assert decide(p, [rep(0)], T, now=105).actions == (Spawn(1, Role.PRIMARY, "exited"),)


def test_phases() -> None:
    assert phase_of(rep(0, conns=0, ready_at=None, started_at=99), T, 100) is Phase.STARTING
    assert phase_of(rep(0, conns=4), T, 100) is Phase.READY
    assert phase_of(rep(0, conns=2), T, 100) is Phase.DEGRADED
    assert phase_of(rep(0, conns=0, zero_since=90), T, 100) is Phase.DEGRADED
    assert phase_of(rep(0, conns=0, zero_since=80), T, 100) is Phase.UNHEALTHY
    assert phase_of(rep(0, silent_since=97), T, 100) is Phase.UNRESPONSIVE
    assert phase_of(rep(0, silent_since=98), T, 100) is Phase.READY
    # a starting replica's metrics server may be silent for a while: not unresponsive
    assert (
        phase_of(rep(0, conns=0, ready_at=None, silent_since=90, started_at=90), T, 100)
        is Phase.STARTING
    )
    assert phase_of(rep(0, running=False), T, 100) is Phase.EXITED


def test_unhealthy_primary_gets_a_successor_while_the_other_serves() -> None:
    d = decide(plan(2), [rep(0, conns=0, zero_since=70), rep(1)], T, now=100)
    assert d.actions == (Spawn(0, Role.SUCCESSOR, "no_connections"),)
    assert not d.edge_outage_suspected


def test_unresponsive_primary_gets_a_successor() -> None:
    d = decide(plan(2), [rep(0, silent_since=90), rep(1)], T, now=100)
    assert d.actions == (Spawn(0, Role.SUCCESSOR, "unresponsive"),)


def test_successor_is_promoted_only_once_ready_at_the_edge() -> None:
    old = rep(0, conns=0, zero_since=70)
    new = rep(0, role=Role.SUCCESSOR, conns=0, ready_at=None, started_at=99, gen=2)
    assert decide(plan(2), [old, new, rep(1)], T, now=100).actions == ()
    ready = rep(0, role=Role.SUCCESSOR, conns=1, ready_at=100, started_at=99, gen=2)
    assert decide(plan(2), [old, ready, rep(1)], T, now=100).actions == (
        Promote(ready.key, "successor_ready"),
    )


def test_successor_that_never_gets_ready_is_abandoned() -> None:
    old = rep(0, conns=0, zero_since=0)
    new = rep(0, role=Role.SUCCESSOR, conns=0, ready_at=None, started_at=30, gen=2)
    assert decide(plan(2), [old, new, rep(1)], T, now=90).actions == (
        Abandon(new.key, "not_ready_in_time"),
    )


def test_whole_tunnel_dark_replaces_one_at_a_time() -> None:
    dark = [
        rep(0, conns=0, zero_since=0),
        rep(1, conns=0, zero_since=0),
        rep(2, conns=0, zero_since=0),
    ]
    d = decide(plan(3), dark, T, now=100)
    assert d.edge_outage_suspected and d.reason
    assert d.actions == (Spawn(0, Role.SUCCESSOR, "no_connections"),)
    # with that successor in flight, nothing more
    trying = [*dark, rep(0, role=Role.SUCCESSOR, conns=0, ready_at=None, started_at=100, gen=2)]
    assert decide(plan(3), trying, T, now=101).actions == ()
    # after an abandoned attempt the storm backoff holds further attempts
    assert decide(plan(3, storm_backoff_until=200.0), dark, T, now=150).actions == ()
    assert decide(plan(3, storm_backoff_until=200.0), dark, T, now=200).actions == (
        Spawn(0, Role.SUCCESSOR, "no_connections"),
    )


def test_rotation_rolls_one_slot_at_a_time() -> None:
    old = [rep(0, spec="old:0"), rep(1, spec="old:0")]
    assert decide(plan(2), old, T, now=10).actions == (Spawn(0, Role.SUCCESSOR, "rotation"),)
    rolling = [*old, rep(0, role=Role.SUCCESSOR, conns=0, ready_at=None, started_at=10, gen=2)]
    assert decide(plan(2), rolling, T, now=11).actions == ()


def test_rotation_waits_while_the_tunnel_is_dark() -> None:
    dark = [rep(0, conns=0, zero_since=95, spec="old:0")]
    assert decide(plan(1), dark, T, now=100).actions == ()


def test_scale_down_drains_extra_slots() -> None:
    d = decide(plan(1), [rep(0), rep(1)], T, now=5)
    assert d.actions == (Drain(rep(1).key, "scale_down"),)


def test_primary_gone_promotes_its_successor() -> None:
    succ = rep(0, role=Role.SUCCESSOR, conns=0, ready_at=None, started_at=5, gen=2)
    assert decide(plan(1), [succ], T, now=6).actions == (Promote(succ.key, "replaced_exited"),)


def test_a_successor_of_a_called_off_roll_drains_at_once() -> None:
    """The source reverted while a successor on the new token was starting: the primary is on
    the target again, so the successor goes (no waiting for ready_timeout, no failed roll)."""
    primary = rep(0, spec=SPEC)
    successor = rep(0, role=Role.SUCCESSOR, spec="new:0", gen=2, conns=0, ready_at=None)
    d = decide(plan(1), [primary, successor], T, now=5)
    assert d.actions == (Drain(successor.key, "superseded"),)


def test_a_successor_replacing_a_primary_on_an_old_spec_is_kept() -> None:
    primary = rep(0, spec="old:0", conns=0, zero_since=0.0)
    successor = rep(0, role=Role.SUCCESSOR, spec="other:0", gen=2, conns=0, ready_at=None)
    d = decide(plan(1), [primary, successor], T, now=5)
    assert not any(isinstance(a, Drain) for a in d.actions)


def successor_of(slot: int, *, conns: int, started_at: float, reason: str) -> Observed:
    r = rep(slot, role=Role.SUCCESSOR, conns=conns, ready_at=None, started_at=started_at, gen=2)
    return r._replace(ready_at=started_at + 0.5 if conns else None, reason=reason)


def test_a_dark_primary_gets_its_successor_started_before_unhealthy_after_runs_out() -> None:
    # unhealthy_after 20 s: the successor starts after 19 s dark, to be ready at 20 s
    assert prestart_after(T) == 19.0
    dark = rep(0, conns=0, zero_since=80)
    assert decide(plan(2), [dark, rep(1)], T, now=98.9).actions == ()
    assert decide(plan(2), [dark, rep(1)], T, now=99.0).actions == (
        Spawn(0, Role.SUCCESSOR, "no_connections"),
    )


def test_a_prestarted_successor_takes_over_only_once_unhealthy_after_has_run_out() -> None:
    dark = rep(0, conns=0, zero_since=80)
    ready = successor_of(0, conns=4, started_at=99.0, reason="no_connections")
    assert decide(plan(2), [dark, ready, rep(1)], T, now=99.8).actions == ()  # held
    assert decide(plan(2), [dark, ready, rep(1)], T, now=100.0).actions == (
        Promote(ready.key, "successor_ready"),
    )


def test_a_successor_for_a_dark_primary_is_drained_when_the_primary_recovers() -> None:
    recovered = rep(0, conns=4, zero_since=None)
    for conns in (0, 4):  # still starting, or already ready: either way not needed
        successor = successor_of(0, conns=conns, started_at=99.0, reason="no_connections")
        assert decide(plan(2), [recovered, successor, rep(1)], T, now=99.5).actions == (
            Drain(successor.key, "primary_recovered"),
        )
    # a rotation's successor is not affected by the primary serving (it always serves)
    rolling = successor_of(0, conns=0, started_at=99.0, reason="rotation")
    assert decide(plan(2), [recovered, rolling, rep(1)], T, now=99.5).actions == ()
