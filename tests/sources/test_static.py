"""Environment-variable and systemd-credential sources: read once, never leaked to children."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sources.conftest import assert_safe, new_token
from tunnelkeeper.config.model import EnvSourceConfig, SystemdCredentialSourceConfig
from tunnelkeeper.sources import (
    MalformedTokenError,
    New,
    TokenSourceError,
    TokenWatcher,
    Unchanged,
    open_source,
)

VAR = "TK_SOURCES_TEST_TOKEN"


async def test_env_variable_is_removed_after_open(monkeypatch: pytest.MonkeyPatch) -> None:
    token = new_token()
    monkeypatch.setenv(VAR, token.reveal() + "\n")
    source = open_source(EnvSourceConfig(var=VAR))
    assert VAR not in os.environ
    child = subprocess.run(
        [sys.executable, "-c", f"import os; print(os.environ.get({VAR!r}, 'absent'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "absent"  # children never inherit it
    got = await source.read()
    assert got.token == token and got.version == token.fingerprint
    assert (await source.read()).token == token  # still readable: held in memory
    assert source.is_static and not source.is_writable


async def test_env_from_given_mapping_leaves_it_alone() -> None:
    token = new_token()
    environ = {VAR: token.reveal()}
    source = open_source(EnvSourceConfig(var=VAR), environ=environ)
    assert (await source.read()).token == token
    assert environ == {VAR: token.reveal()}


async def test_env_missing_and_malformed_are_clean_errors() -> None:
    with pytest.raises(TokenSourceError, match=f"{VAR} is not set"):
        await open_source(EnvSourceConfig(var=VAR), environ={}).read()
    token = new_token()
    bad = token.reveal()[:-6]
    source = open_source(EnvSourceConfig(var=VAR), environ={VAR: bad})
    with pytest.raises(MalformedTokenError) as info:
        await source.read()
    assert_safe(str(info.value), token)
    assert bad not in str(info.value)


async def test_env_cannot_be_written() -> None:
    token = new_token()
    source = open_source(EnvSourceConfig(var=VAR), environ={VAR: token.reveal()})
    with pytest.raises(TokenSourceError, match="cannot be written") as info:
        await source.write(new_token(token.tunnel_id))
    assert_safe(str(info.value), token)


async def test_static_source_is_read_once_by_the_watcher() -> None:
    token = new_token()
    source = open_source(EnvSourceConfig(var=VAR), environ={VAR: token.reveal()})
    watcher = TokenWatcher(source, tunnel_id=token.tunnel_id, unavailable_after_seconds=30)
    assert isinstance(await watcher.poll(), New)
    assert isinstance(await watcher.poll(), Unchanged)


async def test_systemd_credential_from_credentials_directory(tmp_path: Path) -> None:
    token = new_token()
    (tmp_path / "tunnel-token").write_text(token.reveal())
    cfg = SystemdCredentialSourceConfig(name="tunnel-token")
    by_env = open_source(cfg, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert (await by_env.read()).token == token
    by_arg = open_source(cfg, environ={}, credentials_dir=str(tmp_path))
    assert (await by_arg.read()).token == token
    assert by_arg.is_static and not by_arg.is_writable


async def test_systemd_credential_errors(tmp_path: Path) -> None:
    cfg = SystemdCredentialSourceConfig(name="tunnel-token")
    with pytest.raises(TokenSourceError, match="CREDENTIALS_DIRECTORY is not set"):
        await open_source(cfg, environ={}).read()
    with pytest.raises(TokenSourceError, match="no such file"):
        await open_source(cfg, credentials_dir=str(tmp_path)).read()
    escape = SystemdCredentialSourceConfig(name="../etc/passwd")
    with pytest.raises(TokenSourceError, match="not a valid credential name"):
        await open_source(escape, credentials_dir=str(tmp_path)).read()
