"""What a running daemon carries: only the libraries its config uses (issue 16's memory work).

Python reports every import, also the ones a running program makes later, when
PYTHONPROFILEIMPORTTIME is set; the daemon's stderr is its log here.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.harness import Daemon
from tests.waiting import wait_until

pytestmark = pytest.mark.system

# never needed by a daemon with file token sources and no sink: the simulator's server, the
# HTTP client of the Cloudflare API and the secrets managers, the AWS SDK, the scheduler, and
# prometheus_client (the daemon writes its exposition itself and reads a replica's version
# from its start-up line)
NOT_LOADED = ("aiohttp", "httpx", "boto3", "botocore", "apscheduler", "prometheus_client")


def imported(output: str) -> set[str]:
    return {
        line.rsplit("|", 1)[1].strip()
        for line in output.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_a_running_daemon_loads_none_of_the_libraries_its_config_does_not_use(
    run_daemon: Callable[..., Daemon],
) -> None:
    d = run_daemon(env={"PYTHONPROFILEIMPORTTIME": "1"})
    d.wait_ready("portal", 2)
    # the versions come from the replicas' start-up lines; /metrics and status are served
    wait_until(
        lambda: {r["cloudflared_version"] for r in d.primaries("portal")} == {"2026.8.2"},
        timeout=20,
        what="both replicas' versions",
    )
    assert "tunnelkeeper_replica_up{" in d.metrics()
    modules = imported(d.output())
    assert "tunnelkeeper.service.daemon" in modules  # the report is there
    loaded = {m for m in modules if m.split(".")[0] in NOT_LOADED}
    assert not loaded, f"loaded without being configured: {sorted(loaded)}"
