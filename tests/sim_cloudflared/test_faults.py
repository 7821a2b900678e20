"""The CLOUDFLARED_SIM_FAULT test knob: crash after a delay, garbage output, unknown values."""

from __future__ import annotations

from pathlib import Path

from tests.sim_cloudflared.conftest import Spawn
from tests.waiting import wait_until


def _args(edge: str, token_file: Path) -> list[str]:
    return ["tunnel", "--edge", edge, "--output", "json", "run", "--token-file", str(token_file)]


def test_exit_after_ends_the_process_with_status_1(
    spawn: Spawn, silent_edge: str, token_file: Path
) -> None:
    cf = spawn(_args(silent_edge, token_file), env={"CLOUDFLARED_SIM_FAULT": "exit-after=0.5"})
    assert cf.wait_exit(timeout=20) == 1
    assert "Metrics server stopped" not in cf.messages()


def test_garbage_output_mixes_junk_into_both_streams(
    spawn: Spawn, silent_edge: str, token_file: Path
) -> None:
    cf = spawn(_args(silent_edge, token_file), env={"CLOUDFLARED_SIM_FAULT": "garbage-output"})
    wait_until(lambda: any(len(ln) > 1_000_000 for ln in cf.stdout.snapshot()), what="1 MB line")
    wait_until(lambda: any(len(ln) > 1_000_000 for ln in cf.stderr.snapshot()), what="1 MB line")
    assert any(b"not JSON" in ln for ln in cf.stdout.snapshot())
    assert cf.ready()[0] == 503  # still serving
    assert "Starting tunnel" in cf.messages()  # real log lines still parse


def test_unknown_fault_is_ignored_with_a_warning(
    spawn: Spawn, silent_edge: str, token_file: Path
) -> None:
    cf = spawn(_args(silent_edge, token_file), env={"CLOUDFLARED_SIM_FAULT": "meteor-strike"})
    rec = cf.wait_record("Ignoring unknown CLOUDFLARED_SIM_FAULT value")
    assert rec["level"] == "warn" and rec["fault"] == "meteor-strike"
    wait_until(lambda: cf.ready()[0] == 503, what="metrics server up")
