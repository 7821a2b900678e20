"""The benches refuse to measure beside leftover simulators (bench/strays.py): a replica outlives
its daemon by design, and a flooding one skews every CPU figure."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.strays import refuse_strays, strays


@pytest.fixture
def leftover() -> Iterator[int]:
    """A process whose command line is a replica's (its program named cloudflared-sim)."""
    proc = subprocess.Popen(["bash", "-c", "exec -a /opt/x/cloudflared-sim sleep 60"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_leftover_replica_is_found_and_stops_the_bench(
    leftover: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.waiting import wait_until

    wait_until(lambda: leftover in {pid for pid, _ in strays()}, timeout=10, what="the leftover")
    monkeypatch.delenv("TK_BENCH_ALLOW_STRAYS", raising=False)
    with pytest.raises(SystemExit) as stopped:
        refuse_strays()
    assert stopped.value.code == 2
    assert f"{leftover} /opt/x/cloudflared-sim" in capsys.readouterr().err
    monkeypatch.setenv("TK_BENCH_ALLOW_STRAYS", "1")
    refuse_strays()  # measured anyway, when asked to


def test_a_daemon_is_a_stray_and_a_cli_command_is_not(tmp_path: Path) -> None:
    script = tmp_path / "tunnelkeeper"
    script.write_text("#!/bin/sh\nsleep 60\n")
    script.chmod(0o755)
    daemon = subprocess.Popen([str(script), "run", "-c", "x.toml"])
    cli = subprocess.Popen([str(script), "status"])
    try:
        found = {pid for pid, _ in strays()}
        assert daemon.pid in found
        assert cli.pid not in found and os.getpid() not in found
    finally:
        for proc in (daemon, cli):
            proc.kill()
            proc.wait()
