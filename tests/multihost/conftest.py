"""The multi-host rig, shared by the tests of one module: a hub namespace (sim, Alertmanager with
its webhook receiver, Prometheus) and three host namespaces each running `tunnelkeeper run` with
one replica. Everything is stopped by pid and the namespaces deleted, even when a test fails."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.alerts.receiver import Receiver
from tests.harness import Daemon, Load, Sim, stop_process
from tests.multihost import hosts, hub
from tests.multihost.netns import Topology, call_in_netns, enter_netns, stop_pid

T = TypeVar("T")


@dataclass
class Fleet:
    topo: Topology
    workdir: Path
    sim: Sim
    webhook: Receiver
    alertmanager: subprocess.Popen[bytes]
    prometheus: subprocess.Popen[bytes]
    daemons: dict[str, Daemon] = field(default_factory=dict)
    orphans: list[int] = field(default_factory=list)  # replica pids whose daemon was killed

    def in_hub(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run test-side network code from inside the hub namespace."""
        return call_in_netns(self.topo.hub, fn, *args, **kwargs)

    def load(self, rate_per_second: float = 10.0) -> HubLoad:
        return HubLoad(self.sim, hosts.TUNNEL, rate_per_second, netns=self.topo.hub)


@dataclass
class HubLoad(Load):
    """harness.Load, sending from inside the hub namespace."""

    netns: str = ""

    def _run(self) -> None:
        enter_netns(self.netns)
        super()._run()


def _make_receiver() -> Receiver:
    return Receiver()  # its socket is bound where this runs: the hub's loopback


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("multihost")
    topo = Topology(hosts=3)
    procs: list[subprocess.Popen[bytes]] = []
    webhook: Receiver | None = None
    rig: Fleet | None = None
    try:
        topo.create()
        webhook = call_in_netns(topo.hub, _make_receiver).start()
        sim = hub.start_sim(topo, workdir / "sim", hosts.TUNNEL)
        procs.append(sim.proc)
        am = hub.start_alertmanager(topo, workdir / "alertmanager", webhook)
        procs.append(am)
        prom = hub.start_prometheus(topo, workdir / "prometheus")
        procs.append(prom)
        rig = Fleet(topo, workdir, sim, webhook, am, prom)
        for host in topo.host_names:
            config = hosts.write_config(topo, host, workdir / host, sim)
            rig.daemons[host] = hosts.start_daemon(topo, host, config)
            procs.append(rig.daemons[host].proc)
        rig.in_hub(hub.wait_http_ready, f"{hub.ALERTMANAGER_URL}/-/ready", am, "alertmanager")
        rig.in_hub(hub.wait_http_ready, f"{hub.PROMETHEUS_URL}/-/ready", prom, "prometheus")
        for daemon in rig.daemons.values():
            rig.in_hub(hosts.wait_daemon, daemon)
        yield rig
    finally:
        _teardown(topo, procs, rig, webhook)


def _teardown(
    topo: Topology,
    procs: list[subprocess.Popen[bytes]],
    rig: Fleet | None,
    webhook: Receiver | None,
) -> None:
    """Stop what runs (daemons first and together: each drains its replica), then the hub's
    servers, orphaned replicas, the receiver and the namespaces. Fails if a process that was
    running did not exit 0 on SIGTERM or if anything was left in the namespaces."""
    running = [p for p in procs if p.poll() is None]
    daemons = [d.proc for d in rig.daemons.values()] if rig else []
    for proc in daemons:  # one SIGTERM each, as systemd sends
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    for proc in daemons:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for proc in reversed([p for p in procs if p not in daemons]):
        stop_process(proc, timeout=20)
    unclean = [f"{p.args!s:.160} exited {p.returncode}" for p in running if p.returncode != 0]
    for pid in rig.orphans if rig else []:
        stop_pid(pid)
    if webhook is not None:
        webhook.stop()
    leftovers = topo.destroy()
    if leftovers:  # stopped above; a daemon that drained cleanly leaves none
        raise AssertionError(f"processes left in the test namespaces: {leftovers}")
    if unclean:
        raise AssertionError(f"not a clean stop: {unclean}")
