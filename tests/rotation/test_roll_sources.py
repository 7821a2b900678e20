"""Issue 4: a new token written to each kind of source rolls in under load with zero failures.

For every source kind: `tunnelkeeper run` with 2 cloudflared-sim replicas, a steady load through
the sim entry, the tunnel secret refreshed through the sim API (PATCH, then GET token), the new
token written to the source the way that backend's writers do → the daemon rolls surge-then-drain,
every primary ends on the new token, the sim lists only the new connectors, no request fails.
"""

from __future__ import annotations

import stat
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Daemon, Sim
from tests.rotation.conftest import (
    AWS_ENV,
    LOAD_RATE,
    Bao,
    TimedLoad,
    fingerprint,
    make_approle,
    metric,
    refresh_via_api,
    report,
    rolled_to,
    secrets_manager,
    tuned_config,
    write_atomically,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.system
RunDaemon = Callable[..., Daemon]
POLL = 0.5


def roll_under_load(
    request: pytest.FixtureRequest,
    d: Daemon,
    sim: Sim,
    store: Callable[[str], None],
) -> None:
    before = d.wait_ready("portal", 2)
    old_fp = before[0]["token_fingerprint"]
    old_connectors = {r["connector_id"] for r in before}
    with TimedLoad(sim, "portal", rate_per_second=LOAD_RATE) as load:
        wait_until(lambda: load.results["ok"] >= 50, timeout=10, what="load flowing")
        new_token = refresh_via_api(sim, "portal")
        new_fp = fingerprint(new_token)
        assert new_fp != old_fp
        store(new_token)
        sent_at_store = load.total
        after = wait_until(
            lambda: rolled_to(d, sim, new_fp), timeout=20, what="every replica on the new token"
        )
        sent = load.total
        wait_until(lambda: load.total >= sent + 100, timeout=10, what="load after the roll")
    report(request, load)
    assert load.failed == 0, load.failures[:5]
    assert sent - sent_at_store >= 10  # the roll happened under load
    assert not old_connectors & {r["connector_id"] for r in after}
    assert not old_connectors & sim.live_connector_ids("portal")
    assert metric(d, "tunnelkeeper_token_rotations_total", result="success") == 1
    assert metric(d, "tunnelkeeper_token_rotations_total", result="failed") == 0
    assert metric(d, "tunnelkeeper_replica_restarts_total", reason="rotation") == 2
    assert new_token not in d.output() and new_token not in d.metrics()


def test_file_source_atomic_rename(
    request: pytest.FixtureRequest, tmp_path: Path, sim: Sim, run_daemon: RunDaemon
) -> None:
    token_file = tmp_path / "portal.token"
    write_atomically(token_file, sim.token("portal") + "\n")
    cfg = tuned_config(
        tmp_path, sim, f'{{ source = "file", path = "{token_file}", poll_seconds = {POLL} }}'
    )
    d = run_daemon(cfg)
    roll_under_load(request, d, sim, lambda tok: write_atomically(token_file, tok + "\n"))


def test_vault_source_new_kv_version(
    request: pytest.FixtureRequest, tmp_path: Path, sim: Sim, bao: Bao, run_daemon: RunDaemon
) -> None:
    path = f"tk/{uuid.uuid4().hex[:10]}"
    bao.put(path, {"token": sim.token("portal")})
    role = make_approle(bao, tmp_path / "approle", "tk-read", ["read"])
    cfg = tuned_config(
        tmp_path,
        sim,
        f'{{ source = "vault", addr = "{bao.addr}", path = "{path}", '
        f'role_id_file = "{role.role_id_file}", secret_id_file = "{role.secret_id_file}", '
        f"poll_seconds = {POLL} }}",
    )
    d = run_daemon(cfg)

    def store(token: str) -> None:
        bao.put(path, {"token": token})

    roll_under_load(request, d, sim, store)
    assert bao.get(path)[0] == 2


def test_aws_source_put_secret_value(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sim: Sim,
    moto_url: str,
    run_daemon: RunDaemon,
) -> None:
    name = f"tk/portal-{uuid.uuid4().hex[:8]}"
    client = secrets_manager(moto_url)
    client.create_secret(Name=name, SecretString=sim.token("portal"))
    cfg = tuned_config(
        tmp_path,
        sim,
        f'{{ source = "aws-secrets-manager", secret_id = "{name}", region = "us-east-1", '
        f'endpoint_url = "{moto_url}", poll_seconds = {POLL} }}',
    )
    d = run_daemon(cfg, env=AWS_ENV)
    roll_under_load(
        request, d, sim, lambda tok: client.put_secret_value(SecretId=name, SecretString=tok)
    )
    current = client.get_secret_value(SecretId=name)
    assert fingerprint(current["SecretString"]) == d.primaries("portal")[0]["token_fingerprint"]


def test_command_source_output_changes(
    request: pytest.FixtureRequest, tmp_path: Path, sim: Sim, run_daemon: RunDaemon
) -> None:
    script = tmp_path / "print-token"

    def install(token: str) -> None:
        write_atomically(script, f"#!/bin/sh\necho 'fetched' >&2\nprintf '%s\\n' '{token}'\n")
        script.chmod(stat.S_IRWXU)

    install(sim.token("portal"))
    cfg = tuned_config(
        tmp_path,
        sim,
        f'{{ source = "command", argv = ["{script}"], poll_seconds = {POLL} }}',
    )
    d = run_daemon(cfg)
    roll_under_load(request, d, sim, install)
