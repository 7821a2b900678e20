"""Bad input gets a clear error and loses nothing: config, binary, tokens, child output."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import CLOUDFLARED_SIM, TUNNELKEEPER, Daemon, Sim, daemon_config, start_sim
from tests.waiting import free_port, wait_until

pytestmark = pytest.mark.system
RunDaemon = Callable[..., Daemon]


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TUNNELKEEPER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_check_reports_every_config_problem_with_its_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[daemon]\nlisten = "nowhere"\nprobe_interval_secs = 1\n\n'
        '[[tunnel]]\nname = "a"\nreplicas = "two"\ntoken = { source = "file", path = "/x" }\n\n'
        '[[tunnel]]\nname = "b"\nreplicas = 1\ntoken = { source = "carrier-pigeon" }\n'
    )
    out = run_cli("check", "-c", str(cfg))
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "Traceback" not in text
    for key in (
        "daemon.listen",
        "daemon.probe_interval_secs",
        "tunnel[0].replicas",
        "tunnel[1].token.source",
    ):
        assert key in text, text
    assert 'did you mean "probe_interval_seconds"' in text
    # `run` refuses the same file and starts nothing
    run = run_cli("run", "-c", str(cfg))
    assert run.returncode == 78 and "tunnel[0].replicas" in run.stderr  # EX_CONFIG
    assert "Traceback" not in run.stderr


def test_check_passes_on_a_good_config_and_names_the_binary_problem(
    tmp_path: Path, sim: Sim
) -> None:
    good = daemon_config(
        tmp_path, sim, tunnels={"portal": {"id": f'"{sim.info["tunnels"]["portal"]}"'}}
    )
    out = run_cli("check", "-c", str(good))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "cloudflared 2026.8.2" in out.stdout
    missing = tmp_path / "missing.toml"
    missing.write_text(good.read_text().replace(CLOUDFLARED_SIM, "/nonexistent/cloudflared"))
    for cmd, code in (("check", 1), ("run", 78)):
        res = run_cli(cmd, "-c", str(missing))
        assert res.returncode == code
        assert "cloudflared.path" in res.stdout + res.stderr
        assert "Traceback" not in res.stdout + res.stderr


def test_check_refuses_a_token_for_another_tunnel(tmp_path: Path, sim: Sim) -> None:
    cfg = daemon_config(
        tmp_path, sim, tunnels={"portal": {"id": '"00000000-0000-4000-8000-000000000000"'}}
    )
    out = run_cli("check", "-c", str(cfg))
    assert out.returncode == 1
    assert "tunnel[0].token" in out.stdout and "00000000-0000-4000-8000-000000000000" in out.stdout
    assert sim.token("portal") not in out.stdout + out.stderr


def test_malformed_token_keeps_that_tunnel_down_and_the_others_up(
    tmp_path: Path, origin_url: str
) -> None:
    s = start_sim(tmp_path / "sim2", {"good": origin_url, "bad": origin_url})
    try:
        good_token = s.token("bad")
        s.token_file("bad").write_text("this is not a token\n")
        cfg = daemon_config(tmp_path, s, tunnels={"good": {}, "bad": {}})
        from tests.harness import start_daemon

        d = start_daemon(cfg)
        try:
            d.wait_ready("good", 2)
            bad = d.tunnel("bad")
            assert bad["replicas"] == [] and "refused" in (bad["token"]["error"] or "")
            assert 'tunnelkeeper_tunnel_token_valid{tunnel="bad"} 0.0' in d.metrics()
            assert "this is not a token" not in d.output()
            # Fixing the source brings the tunnel up without a restart.
            s.token_file("bad").write_text(good_token)
            d.wait_ready("bad", 2, timeout=20)
        finally:
            d.stop()
    finally:
        s.stop()


def test_replica_that_prints_garbage_does_not_hurt_the_daemon(
    tmp_path: Path, sim: Sim, run_daemon: RunDaemon
) -> None:
    wrapper = tmp_path / "cloudflared-garbage"
    wrapper.write_text(
        f'#!/bin/sh\nexec env CLOUDFLARED_SIM_FAULT=garbage-output {CLOUDFLARED_SIM} "$@"\n'
    )
    wrapper.chmod(0o755)
    d = run_daemon(cloudflared=str(wrapper))
    d.wait_ready("portal", 2)
    size_before = d.log_path.stat().st_size
    # The children write ~1 MB lines every second; our output must stay small.
    wait_until(lambda: d.tunnel("portal")["replicas"][0]["uptime_seconds"] > 4, timeout=15)
    grown = d.log_path.stat().st_size - size_before
    assert grown < 200_000, grown
    assert d.proc.poll() is None
    assert all(r["ready_connections"] > 0 for r in d.primaries("portal"))


def test_log_flood_from_an_unreachable_edge_is_summarised(
    tmp_path: Path, sim: Sim, run_daemon: RunDaemon
) -> None:
    closed = free_port()  # nothing listens here: cloudflared retries without delay and floods
    cfg_text = f'args = ["--edge", "127.0.0.1:{closed}"]'
    d = run_daemon({"portal": {"replicas": 1}})
    d.stop()
    cfg = d.config
    cfg.write_text(cfg.read_text().replace(f'args = ["--edge", "{sim.edge}"]', cfg_text))
    d.log_path.write_text("")
    from tests.harness import start_daemon

    d2 = start_daemon(cfg)
    try:
        wait_until(
            lambda: (
                d2.tunnel("portal")["replicas"]
                and d2.tunnel("portal")["replicas"][0]["uptime_seconds"] > 3
            ),
            timeout=15,
        )
    finally:
        d2.stop()
    out = d2.output()
    relayed = out.count("Serve tunnel error")
    assert 0 < relayed <= 10, relayed
    assert len(out) < 100_000


def test_metrics_port_taken_by_another_program_is_retried_on_another_port(
    tmp_path: Path, sim: Sim
) -> None:
    """The real race (port free when chosen, taken before cloudflared binds) drives cloudflared
    to exit 1 with its bind error; the replica process notices it and the next start uses a
    fresh port. Reproduced here by handing the replica a port another socket holds."""
    import asyncio

    from tunnelkeeper.supervise.launch import ReplicaId, SpawnSpec
    from tunnelkeeper.supervise.replica import ReplicaProcess
    from tunnelkeeper.tunneltoken import TunnelToken

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    exits: list[int | None] = []

    async def go() -> ReplicaProcess:
        spec = SpawnSpec(
            Path(CLOUDFLARED_SIM), ("--edge", sim.edge), "t", 1.0, port, tmp_path / "run"
        )
        proc = ReplicaProcess(
            ReplicaId("portal", 0, 1),
            spec,
            TunnelToken.parse(sim.token("portal")),
            lambda p: exits.append(p.returncode),
        )
        proc.start()
        await asyncio.wait_for(proc.exited.wait(), 15)
        return proc

    try:
        proc = asyncio.run(go())
    finally:
        holder.close()
    assert exits == [1]
    assert proc.bind_failed
    assert any("address already in use" in e for e in proc.recent_errors.lines)
