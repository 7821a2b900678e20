"""Supervision core: keeps each tunnel's replicas running and ready at the edge.

Owns the pure decision function (``policy``), the per-tunnel supervisor that observes and acts
on it, replica processes (spawn, pidfd, probe, drain), the launch ledger and adoption of
running replicas, and the relay of each replica's log.
May import: ``config`` and the foundation modules; never ``alerts``, ``service`` or the
simulator.
"""
