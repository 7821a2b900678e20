"""Command source: a real child process prints the token."""

from __future__ import annotations

import base64
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest
from structlog.testing import capture_logs

from tests.sources.conftest import assert_safe, new_token
from tests.waiting import wait_until
from tunnelkeeper.config.model import CommandSourceConfig
from tunnelkeeper.sources import (
    MalformedTokenError,
    New,
    TokenSourceError,
    TokenWatcher,
    Unchanged,
    open_source,
)
from tunnelkeeper.tunneltoken import TunnelToken


def script(tmp_path: Path, body: str) -> tuple[str, ...]:
    path = tmp_path / "print_token.py"
    path.write_text(body)
    return (sys.executable, str(path))


def printing(
    tmp_path: Path, token: TunnelToken, *, stderr: str = "", code: int = 0
) -> tuple[str, ...]:
    body = (
        f"import sys\nsys.stderr.write({stderr!r})\nprint({token.reveal()!r})\nsys.exit({code})\n"
    )
    return script(tmp_path, body)


async def test_prints_token_and_watcher_sees_it_once(tmp_path: Path) -> None:
    token = new_token()
    source = open_source(CommandSourceConfig(argv=printing(tmp_path, token)))
    assert await source.current_version() is None
    got = await source.read()
    assert got.token == token and got.version == token.fingerprint
    assert source.description == f"command {sys.executable}"
    watcher = TokenWatcher(source, tunnel_id=token.tunnel_id, unavailable_after_seconds=60)
    assert isinstance(await watcher.poll(), New)
    assert isinstance(await watcher.poll(), Unchanged)


async def test_environment_is_clean_plus_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = new_token()
    monkeypatch.setenv("TK_PARENT_ONLY", "leak")
    argv = script(
        tmp_path,
        "import os, sys\n"
        "if 'TK_PARENT_ONLY' in os.environ: sys.exit(3)\n"
        "if sys.stdin.read() != '': sys.exit(4)\n"
        "print(os.environ['TK_GIVEN'])\n",
    )
    cfg = CommandSourceConfig(argv=argv, env={"TK_GIVEN": token.reveal()})
    assert (await open_source(cfg).read()).token == token


async def test_nonzero_exit_names_the_code_not_the_output(tmp_path: Path) -> None:
    token = new_token()
    source = open_source(CommandSourceConfig(argv=printing(tmp_path, token, code=4)))
    with pytest.raises(TokenSourceError, match="exited with status 4") as info:
        await source.read()
    assert_safe(str(info.value), token)


async def test_garbage_output_is_malformed(tmp_path: Path) -> None:
    token = new_token()
    argv = script(tmp_path, f"print({token.reveal()[:-10]!r})\n")
    with pytest.raises(MalformedTokenError) as info:
        await open_source(CommandSourceConfig(argv=argv)).read()
    assert_safe(str(info.value), token)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def hanging_script(tmp_path: Path, spawn: str) -> tuple[tuple[str, ...], Path]:
    """sh that starts ``spawn`` in the background, records both pids, then waits forever."""
    pids = tmp_path / "pids"
    sh = tmp_path / "hang.sh"
    sh.write_text(
        f"{spawn} &\necho $! > {pids}.tmp\necho $$ >> {pids}.tmp\nmv {pids}.tmp {pids}\n"
        "exec sleep 600\n"
    )
    return ("/bin/sh", str(sh)), pids


def kill_leftovers(pids: Path) -> None:
    for pid in [int(p) for p in pids.read_text().split()] if pids.exists() else []:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    argv, pids = hanging_script(tmp_path, "sleep 600")
    source = open_source(CommandSourceConfig(argv=argv, timeout_seconds=1.5))
    try:
        with pytest.raises(TokenSourceError, match=r"timed out after 1\.5 s"):
            await source.read()
        started = [int(p) for p in pids.read_text().split()]
        assert len(started) == 2
        wait_until(lambda: all(gone(p) for p in started), timeout=10, what="group killed")
    finally:
        kill_leftovers(pids)


async def test_timeout_returns_even_if_a_daemonized_child_holds_stdout(tmp_path: Path) -> None:
    argv, pids = hanging_script(tmp_path, "setsid sleep 600")
    source = open_source(CommandSourceConfig(argv=argv, timeout_seconds=1.5))
    try:
        with pytest.raises(TokenSourceError, match="timed out"):
            await source.read()
        shell = int(pids.read_text().split()[1])
        wait_until(lambda: gone(shell), timeout=10, what="command killed")
    finally:
        kill_leftovers(pids)  # outside the command's group: this test started it, it stops it


async def test_flooding_stdout_is_cut_off(tmp_path: Path) -> None:
    argv = script(tmp_path, "import sys\nwhile True: sys.stdout.write('A' * 65536)\n")
    source = open_source(CommandSourceConfig(argv=argv, timeout_seconds=30))
    with pytest.raises(TokenSourceError, match="printed more than 65536 bytes"):
        await source.read()


async def test_missing_program_is_a_clean_error(tmp_path: Path) -> None:
    source = open_source(CommandSourceConfig(argv=(str(tmp_path / "no-such-op"), "read")))
    with pytest.raises(TokenSourceError, match="cannot run"):
        await source.read()
    with pytest.raises(TokenSourceError, match="argv is empty"):
        open_source(CommandSourceConfig(argv=()))


@pytest.mark.parametrize("code", [0, 1])
async def test_stderr_is_logged_with_the_token_redacted(tmp_path: Path, code: int) -> None:
    token = new_token()
    secret = base64.b64encode(token.secret).decode()
    chatter = f"fetched {token.reveal()} ok\nsecret part {secret}\nplain line\n"
    source = open_source(
        CommandSourceConfig(argv=printing(tmp_path, token, stderr=chatter, code=code))
    )
    with capture_logs() as logs:
        if code:
            with pytest.raises(TokenSourceError):
                await source.read()
        else:
            await source.read()
    lines = [e["line"] for e in logs if e["event"] == "token_command_stderr"]
    assert len(lines) == 3
    assert "plain line" in lines
    assert lines[0] == "fetched [redacted] ok"
    assert lines[1] == "secret part [redacted]"
    for entry in logs:
        assert_safe(repr(entry), token)
