"""One origin host: `tunnelkeeper run` inside its own namespace, polling the sim's API for the
fleet view and sending its alerts to the hub's Alertmanager. Its cloudflared-sim replicas inherit
the namespace and reach the sim's edge across the bridge."""

from __future__ import annotations

from pathlib import Path

from tests.harness import CLOUDFLARED_SIM, TUNNELKEEPER, Daemon, Sim
from tests.multihost.hub import ALERTMANAGER_URL, DAEMON_PORT, popen_in
from tests.multihost.netns import Topology
from tests.waiting import wait_until

TUNNEL = "portal"
EXPECTED_CONNECTORS = 3
POLL_SECONDS = 5  # the smallest [fleet] poll_seconds the config accepts
FLEET_FOR_SECONDS = 1
# Longer than FleetConnectorsLow's for_seconds: a host whose fleet view lags (up to one poll) can
# then only fire before another host resolves, never after, so Alertmanager sees one episode.
RESOLVE_HOLD_SECONDS = 4


def write_config(topo: Topology, host: str, workdir: Path, sim: Sim) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    api_token = workdir / "cf-api.token"
    api_token.write_text(sim.info["api_token"] + "\n")
    api_token.chmod(0o600)
    text = f"""
[daemon]
host = "{host}"
listen = "{topo.ip(host)}:{DAEMON_PORT}"
state_dir = "{workdir / "state"}"
runtime_dir = "{workdir / "run"}"
probe_interval_seconds = 0.5
ready_timeout_seconds = 20

[cloudflared]
path = "{CLOUDFLARED_SIM}"
args = ["--edge", "{sim.edge}"]

[[tunnel]]
name = "{TUNNEL}"
id = "{sim.info["tunnels"][TUNNEL]}"
replicas = 1
grace_period_seconds = 2
# the fleet view is under test, not local replacement: a replica cut off with its host is kept
unhealthy_after_seconds = 120
expected_connectors = {EXPECTED_CONNECTORS}
token = {{ source = "file", path = "{sim.token_file(TUNNEL)}" }}

[alerts]
for_seconds = 5
resolve_hold_seconds = {RESOLVE_HOLD_SECONDS}
# re-post every second: a fleet-wide alert re-posted on a timer after another host resolved it
# would open it again in Alertmanager within the test (the bug of the first release)
resend_interval_seconds = 1

[alerts.overrides.FleetConnectorsLow]
for_seconds = {FLEET_FOR_SECONDS}

[[alerts.sink]]
kind = "alertmanager"
url = "{ALERTMANAGER_URL}"

[fleet]
api_url = "{sim.api}"
account_id = "{sim.info["account_id"]}"
api_token_file = "{api_token}"
poll_seconds = {POLL_SECONDS}
"""
    path = workdir / "tunnelkeeper.toml"
    path.write_text(text)
    return path


def start_daemon(topo: Topology, host: str, config: Path) -> Daemon:
    """Start `tunnelkeeper run` in the host's namespace; wait for it with :func:`wait_daemon`
    from inside the hub (its listener is on the host's bridge address)."""
    log_path = config.parent / "daemon.log"
    proc = popen_in(topo, topo.ns(host), [TUNNELKEEPER, "run", "-c", str(config)], log_path)
    return Daemon(proc, config, f"http://{topo.ip(host)}:{DAEMON_PORT}", log_path)


def wait_daemon(daemon: Daemon) -> None:
    """Call from inside the hub: /healthz answers, then its one replica is ready at the edge."""

    def up() -> bool:
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"daemon exited {daemon.proc.returncode}: {daemon.output()[-3000:]}")
        return daemon.status() is not None

    wait_until(up, timeout=30, interval=0.1, what=f"daemon {daemon.url}")
    daemon.wait_ready(TUNNEL, 1, timeout=30)
