"""Issue 4: `tunnelkeeper refresh-secret TUNNEL [--cleanup]` end to end against the simulator's
API, an OpenBao KV v2 source (AppRole) and a running daemon; and its refusals."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from tests.harness import Daemon, Sim, run_cli
from tests.rotation.conftest import (
    LOAD_RATE,
    AppRole,
    Bao,
    TimedLoad,
    api_token,
    fingerprint,
    make_approle,
    metric,
    report,
    rolled_to,
    tuned_config,
    write_atomically,
)
from tests.waiting import await_until, wait_until
from tunnelkeeper.cloudflare.refresh import refresh_tunnel_secret, scheduled_refresh
from tunnelkeeper.cloudflare.schedule import STATE_FILE, RefreshScheduler
from tunnelkeeper.config.load import load_config

pytestmark = pytest.mark.system
RunDaemon = Callable[..., Daemon]


def refresh_secret(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("refresh-secret", cfg, *args, timeout=85)


def fleet(tmp_path: Path, sim: Sim) -> str:
    api_token_file = tmp_path / "cf-api.token"
    write_atomically(api_token_file, sim.info["api_token"] + "\n")
    return (
        "[fleet]\n"
        f'api_url = "{sim.api}"\n'
        f'account_id = "{sim.info["account_id"]}"\n'
        f'api_token_file = "{api_token_file}"\n'
    )


def vault_source(bao: Bao, path: str, role: AppRole) -> str:
    return (
        f'{{ source = "vault", addr = "{bao.addr}", path = "{path}", '
        f'role_id_file = "{role.role_id_file}", secret_id_file = "{role.secret_id_file}", '
        "poll_seconds = 0.5 }"
    )


def test_refresh_secret_with_cleanup_end_to_end(
    request: pytest.FixtureRequest, tmp_path: Path, sim: Sim, bao: Bao, run_daemon: RunDaemon
) -> None:
    path = f"tk/{uuid.uuid4().hex[:10]}"
    old_token = sim.token("portal")
    bao.put(path, {"token": old_token, "owner": "ops"})
    role = make_approle(bao, tmp_path / "approle", "tk-rw", ["create", "update", "read"])
    cfg = tuned_config(tmp_path, sim, vault_source(bao, path, role), extra=fleet(tmp_path, sim))
    d = run_daemon(cfg)
    before = d.wait_ready("portal", 2)
    old_connectors = {r["connector_id"] for r in before}
    with TimedLoad(sim, "portal", rate_per_second=LOAD_RATE) as load:
        wait_until(lambda: load.results["ok"] >= 50, timeout=10, what="load flowing")
        result = refresh_secret(cfg, "portal", "--cleanup")
        sent = load.total
        wait_until(lambda: load.total >= sent + 100, timeout=10, what="load after the refresh")
    report(request, load)
    assert result.returncode == 0, (result.stdout, result.stderr)
    new_token = api_token(sim, "portal")
    new_fp = fingerprint(new_token)
    # the secret was refreshed at the (simulated) API ...
    assert new_fp != fingerprint(old_token)
    # ... and the new token is the new KV version, other fields kept
    version, data = bao.get(path)
    assert version == 2
    assert data == {"token": new_token, "owner": "ops"}
    # what the user reads: fingerprints, where it went, what was cleaned; never the token
    out = result.stdout
    assert new_fp in out and fingerprint(old_token) in out
    assert "(version 2)" in out
    assert "removed 2 connector(s)" in out
    for connector in old_connectors:
        assert connector in out
    assert new_token not in out + result.stderr and old_token not in out + result.stderr
    assert sim.info["api_token"] not in out + result.stderr
    # the daemon rolled, old connectors are gone from the API entirely, nothing failed
    wait_until(lambda: rolled_to(d, sim, new_fp), timeout=15, what="daemon on the new token")
    assert not old_connectors & {c["id"] for c in sim.connectors("portal")}
    assert metric(d, "tunnelkeeper_token_rotations_total", result="success") == 1
    assert load.failed == 0, load.failures[:5]


def test_secret_changed_but_not_stored_is_said_loudly(tmp_path: Path, sim: Sim, bao: Bao) -> None:
    path = f"tk/{uuid.uuid4().hex[:10]}"
    old_token = sim.token("portal")
    bao.put(path, {"token": old_token})
    reader = make_approle(bao, tmp_path / "approle", "tk-read", ["read"])  # cannot write
    cfg = tuned_config(tmp_path, sim, vault_source(bao, path, reader), extra=fleet(tmp_path, sim))
    result = refresh_secret(cfg, "portal")
    assert result.returncode == 1
    err = result.stderr
    assert "WAS CHANGED" in err and "NOT STORED" in err
    assert "refresh-secret portal" in err  # how to recover
    assert "permission denied" in err.lower() or "403" in err
    assert "Traceback" not in err
    assert api_token(sim, "portal") not in err and old_token not in err
    # the API really changed, the store still has the old token
    assert fingerprint(api_token(sim, "portal")) != fingerprint(old_token)
    assert bao.get(path) == (1, {"token": old_token})


def test_refusals_change_nothing(tmp_path: Path, sim: Sim) -> None:
    token_file = tmp_path / "portal.token"
    write_atomically(token_file, sim.token("portal") + "\n")
    original = api_token(sim, "portal")
    file_source = f'{{ source = "file", path = "{token_file}" }}'

    no_fleet = tuned_config(tmp_path, sim, file_source)
    result = refresh_secret(no_fleet, "portal")
    assert result.returncode == 1
    assert "[fleet]" in result.stderr and "api_token_file" in result.stderr

    with_fleet = fleet(tmp_path, sim)
    env_source = tuned_config(
        tmp_path, sim, '{ source = "env", var = "PORTAL_TOKEN" }', extra=with_fleet
    )
    result = refresh_secret(env_source, "portal")
    assert result.returncode == 1
    assert "cannot be written" in result.stderr and "vault" in result.stderr

    unknown = tuned_config(tmp_path, sim, file_source, extra=with_fleet)
    result = refresh_secret(unknown, "nope")
    assert result.returncode == 1
    assert "no tunnel named 'nope'" in result.stderr and "portal" in result.stderr

    write_atomically(token_file, "not a token\n")
    result = refresh_secret(unknown, "portal")
    assert result.returncode == 1
    assert "tunnel.id" in result.stderr

    for out in (result.stdout, result.stderr):
        assert "Traceback" not in out
    assert api_token(sim, "portal") == original  # nothing was refreshed


async def test_scheduled_refresh_catches_up_a_missed_run_once(tmp_path: Path, sim: Sim) -> None:
    token_file = tmp_path / "portal.token"
    write_atomically(token_file, sim.token("portal") + "\n")
    cfg = tuned_config(
        tmp_path,
        sim,
        f'{{ source = "file", path = "{token_file}" }}',
        extra=fleet(tmp_path, sim),
        refresh_schedule='"0 3 * * *"',
        refresh_timezone='"Europe/Berlin"',
    )
    config = load_config(cfg)
    state_dir = tmp_path / "state"
    state_dir.mkdir(exist_ok=True)
    three_days_ago = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    (state_dir / STATE_FILE).write_text(
        json.dumps({"version": 1, "tunnels": {"portal": {"last_success_at": three_days_ago}}})
    )
    scheduler = RefreshScheduler(
        config, state_dir, partial(scheduled_refresh, config), check_interval_seconds=0.05
    )
    await scheduler.start()
    try:
        await await_until(
            lambda: _is(
                fingerprint(token_file.read_text()) == fingerprint(api_token(sim, "portal"))
                and "secret_refreshed" in (sim.dir / "sim.log").read_text()
            ),
            timeout=20,
            what="the catch-up refresh stored",
        )
        entry = json.loads((state_dir / STATE_FILE).read_text())["tunnels"]["portal"]
        assert entry["last_result"] == "success"
    finally:
        await scheduler.aclose()
    assert (sim.dir / "sim.log").read_text().count("secret_refreshed") == 1


async def _is(value: bool) -> bool:
    return value


async def test_cleanup_leaves_old_connectors_alone_when_the_fleet_does_not_move(
    tmp_path: Path, sim: Sim, run_daemon: RunDaemon
) -> None:
    # The daemon reads one file; refresh-secret writes another, so no replica ever rolls.
    daemon_file = tmp_path / "daemon.token"
    write_atomically(daemon_file, sim.token("portal") + "\n")
    d = run_daemon(tuned_config(tmp_path, sim, f'{{ source = "file", path = "{daemon_file}" }}'))
    old = {r["connector_id"] for r in d.wait_ready("portal", 2)}
    other_file = tmp_path / "elsewhere.token"
    write_atomically(other_file, sim.token("portal") + "\n")
    other = tmp_path / "other"
    other.mkdir()
    cfg = load_config(
        tuned_config(
            other, sim, f'{{ source = "file", path = "{other_file}" }}', extra=fleet(other, sim)
        )
    )
    result = await refresh_tunnel_secret(cfg, cfg.tunnels[0], cleanup=True, wait_seconds=3)
    assert set(result.old_connectors) == old
    assert result.removed_connectors == ()
    assert result.cleanup_problem is not None and "left alone" in result.cleanup_problem
    assert fingerprint(other_file.read_text()) == result.new_fingerprint
    # the old replicas keep their live connections: nothing was deleted
    assert sim.live_connector_ids("portal") == old
