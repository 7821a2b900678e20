"""What a running daemon carries: only the libraries its config uses (issue 16's memory work).

Python reports every import, also the ones a running program makes later, when
PYTHONPROFILEIMPORTTIME is set; the daemon's stderr is its log here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Daemon, Sim
from tests.servers import openbao
from tests.waiting import wait_until

pytestmark = pytest.mark.system

# never needed by a daemon with file token sources and no sink: the simulator's server, the
# HTTP client of the Cloudflare API and the secrets managers, the AWS SDK, the scheduler, and
# prometheus_client (the daemon writes its exposition itself and reads a replica's version
# from its start-up line)
# and OpenSSL's TLS module (tunnelkeeper/noopenssl.py): a hidden `ssl` shows in the report as a
# failed import of `ssl`, never of the `_ssl` extension behind it
NOT_LOADED = (
    "aiohttp", "httpx", "boto3", "botocore", "apscheduler", "prometheus_client", "_ssl",
)  # fmt: skip


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
    # the replicas start first: alerting and the API tasks load while they connect
    before_spawn = imported(d.output().split('"replica_spawned"', 1)[0])
    assert "tunnelkeeper.supervise.supervisor" in before_spawn
    assert not {"tunnelkeeper.alerts.pipeline", "tunnelkeeper.service.apitasks"} & before_spawn
    assert {"tunnelkeeper.alerts.pipeline", "tunnelkeeper.service.apitasks"} <= modules


def test_a_cold_start_launches_before_loading_what_only_the_running_daemon_needs(
    run_daemon: Callable[..., Daemon],
) -> None:
    """The early launch's path (service/startup.py) reads the config and launches; the event
    loop (asyncio, loaded right after the launch) and what introspects code (``inspect``,
    which ``dataclasses`` and ``typing_extensions`` load) come after, while the replica
    starts."""
    d = run_daemon(env={"PYTHONPROFILEIMPORTTIME": "1"})
    d.wait_ready("portal", 2)
    assert d.events("replicas_launched_early")  # a cold start: there was an early launch
    lines = [line for line in d.output().splitlines() if line.startswith("import time:")]
    # the launch is the next thing run after the early launch's module is loaded
    launch = next(
        i for i, line in enumerate(lines) if line.endswith("| tunnelkeeper.service.coldstart")
    )
    before = imported("\n".join(lines[: launch + 1]))
    assert "tunnelkeeper.config.load" in before and "asyncio" not in before
    # typing_extensions would bring inspect (structs.py hides it; a hidden module shows in the
    # report as a failed import, as ssl does)
    assert not {"inspect", "ast", "dis", "tokenize", "dataclasses"} & before
    assert "inspect" in imported(d.output())  # the report sees it once asyncio loads it


def test_a_daemon_started_without_openssl_reads_its_token_from_vault_over_tls(
    tmp_path: Path, sim: Sim, run_daemon: Callable[..., Daemon]
) -> None:
    """The daemon's asyncio starts without ``ssl``; a configured https source loads it then,
    and TLS with the CA the config names works (OpenBao's dev CA, generated at its start)."""
    home = tmp_path / "bao"
    home.mkdir()
    bao = openbao(home, tls=True)
    bao.server.start()
    try:
        kv_path = f"tk/{uuid.uuid4().hex[:8]}"
        bao.put(kv_path, {"token": sim.token("portal")})
        vault_token = tmp_path / "vault.token"
        vault_token.write_text(bao.root_token + "\n")
        source = (
            f'{{ source = "vault", addr = "{bao.addr}", path = "{kv_path}", '
            f'token_file = "{vault_token}", ca_cert = "{bao.server.ca_file}" }}'
        )
        d = run_daemon({"portal": {"replicas": 1, "token": source}},
                       env={"PYTHONPROFILEIMPORTTIME": "1"})  # fmt: skip
        d.wait_ready("portal", 1)
        assert d.tunnel("portal")["token"]["error"] is None
        assert {"_ssl", "httpx"} <= imported(d.output())  # loaded when the source needed them
    finally:
        bao.server.stop()
