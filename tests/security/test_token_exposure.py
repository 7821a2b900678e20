"""A running daemon never shows a tunnel token: not on any command line or in any other
process's environment, not in its logs, files, metrics, status, or CLI output. cloudflared gets
it only through a 0600 file in a 0700 directory."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.security.conftest import ADMIN_TOKEN_VAR, Stack
from tests.security.leaks import (
    Secret,
    cmdline_leaks,
    environ_leaks,
    file_leaks,
    leaks,
    run_tk,
)
from tests.waiting import wait_until
from tunnelkeeper.tunneltoken import TunnelToken

pytestmark = pytest.mark.system


def test_the_scanners_find_a_token_where_one_is() -> None:
    """Control: a process holding a (throwaway) token in argv and environment is reported."""
    decoy = TunnelToken.build("0" * 32, "00000000-0000-4000-8000-000000000000", os.urandom(32))
    secret = Secret.of("decoy", decoy.reveal())
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", decoy.reveal()[60:92]],
        env={"DECOY": decoy.reveal()},
    )
    try:
        # right after exec the kernel may not have set the new argv up yet
        wait_until(lambda: Path(f"/proc/{proc.pid}/cmdline").read_bytes(), what="decoy argv")
        assert any(f"pid {proc.pid}:" in hit for hit in cmdline_leaks([secret]))
        assert any(f"pid {proc.pid} " in hit for hit in environ_leaks([secret]))
    finally:
        proc.kill()
        proc.wait()


def test_no_command_line_holds_a_token(stack: Stack) -> None:
    replicas = stack.replicas()
    assert len(replicas) >= 3, "expected the daemon's three replicas"
    for proc in replicas:
        cmd = proc.cmdline()
        assert "--token-file" in cmd and "--token" not in cmd, cmd
    assert cmdline_leaks(stack.secrets) == []


def test_no_other_process_environment_holds_a_token(stack: Stack) -> None:
    # The env source's variable is necessarily in the daemon's initial environment (readable
    # only by its own user and root); it must reach no other process, replicas above all.
    assert environ_leaks([stack.portal]) == []
    assert environ_leaks([stack.admin], except_pids=[stack.daemon.proc.pid]) == []
    for proc in stack.replicas():
        assert leaks("\n".join(proc.environ().values()), stack.secrets) == []


def test_replica_token_files_are_private(stack: Stack) -> None:
    replicas_dir = stack.runtime_dir / "replicas"
    assert stat.S_IMODE(replicas_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(stack.runtime_dir.stat().st_mode) == 0o700
    token_files = sorted(replicas_dir.glob("*.token"))
    assert len(token_files) >= 3
    for path in token_files:
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600, path
        assert st.st_uid == os.getuid()
    # and they are what the replicas read: the tokens are in them (the scanner's control)
    contents = "".join(p.read_text() for p in token_files)
    assert leaks(contents, stack.secrets) == ["portal token", "admin token"]


def test_logs_and_files_hold_no_token(stack: Stack) -> None:
    assert leaks(stack.daemon.output(), stack.secrets) == []
    assert file_leaks(stack.state_dir, stack.secrets) == []
    assert file_leaks(stack.runtime_dir, stack.secrets) == []  # replica logs, socket, config


def test_http_endpoints_show_no_token(stack: Stack) -> None:
    url = stack.daemon.url
    for path in ("/metrics", "/status", "/healthz", "/readyz"):
        resp = httpx.get(url + path, timeout=10)
        assert resp.status_code in (200, 503), path
        assert leaks(resp.text, stack.secrets) == [], path
    status = stack.daemon.status()
    shown = {r["token_fingerprint"] for t in status["tunnels"] for r in t["replicas"]}
    assert len(shown) == 2 and all(len(f) == 12 for f in shown)  # a fingerprint per tunnel
    transport = httpx.HTTPTransport(uds=str(stack.runtime_dir / "control.sock"))
    with httpx.Client(transport=transport, timeout=10) as client:
        assert leaks(client.get("http://daemon/status").text, stack.secrets) == []


def test_status_and_check_output_show_no_token(stack: Stack) -> None:
    env = {ADMIN_TOKEN_VAR: stack.sim.token("admin")}  # as the daemon's unit would have it
    for args in (["status"], ["status", "--json"], ["check"]):
        out = run_tk(*args, "-c", str(stack.config), env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert leaks(out.stdout + out.stderr, stack.secrets) == [], args
