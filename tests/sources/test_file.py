"""File source and the watcher over it: what the daemon sees as a token file changes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.sources.conftest import assert_safe, new_token
from tunnelkeeper.config.model import FileSourceConfig
from tunnelkeeper.sources import (
    Failed,
    MalformedTokenError,
    New,
    Refused,
    TokenSourceError,
    TokenWatcher,
    Unchanged,
    open_source,
)
from tunnelkeeper.tunneltoken import TunnelToken


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def replace_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def watcher_for(
    path: Path, tunnel_id: str | None = None, clock: Clock | None = None
) -> TokenWatcher:
    return TokenWatcher(
        open_source(FileSourceConfig(path=path)),
        tunnel_id=tunnel_id,
        unavailable_after_seconds=30,
        clock=clock or Clock(),
    )


async def test_reads_stripped_token_versioned_by_fingerprint(tmp_path: Path) -> None:
    token = new_token()
    path = tmp_path / "portal.token"
    path.write_text(f"\n  {token.reveal()}  \n")
    source = open_source(FileSourceConfig(path=path))
    got = await source.read()
    assert got.token == token
    assert got.version == token.fingerprint
    assert source.description == f"file {path}"
    assert source.is_writable and not source.is_static
    assert token.reveal() not in repr(source) + repr(got)


async def test_atomic_rename_is_a_new_version(tmp_path: Path) -> None:
    a = new_token()
    b = new_token(a.tunnel_id)  # a rotated secret: same tunnel, new token
    path = tmp_path / "t"
    path.write_text(a.reveal())
    watcher = watcher_for(path)
    first = await watcher.poll()
    assert isinstance(first, New) and first.version.token == a
    assert isinstance(await watcher.poll(), Unchanged)

    replace_atomically(path, b.reveal() + "\n")
    event = await watcher.poll()
    assert isinstance(event, New) and event.version.token == b
    assert watcher.current is not None and watcher.current.token == b
    assert isinstance(await watcher.poll(), Unchanged)


async def test_half_written_file_refused_once_then_completed_write_accepted(tmp_path: Path) -> None:
    a = new_token()
    b = new_token(a.tunnel_id)  # a rotated secret: same tunnel, new token
    path = tmp_path / "t"
    path.write_text(a.reveal())
    watcher = watcher_for(path)
    assert isinstance(await watcher.poll(), New)

    text = b.reveal()
    with open(path, "r+") as fh:  # a non-atomic writer: truncate, then write in two steps
        fh.truncate(0)
        fh.write(text[: len(text) // 2])
        fh.flush()
        refused = await watcher.poll()
        assert isinstance(refused, Refused)
        assert_safe(refused.reason, a, b)
        assert str(path) in refused.reason
        assert isinstance(await watcher.poll(), Unchanged)  # reported once, not every poll
        assert watcher.refused == refused
        assert watcher.current is not None and watcher.current.token == a

        fh.write(text[len(text) // 2 :])
        fh.flush()
    event = await watcher.poll()
    assert isinstance(event, New) and event.version.token == b
    assert watcher.refused is None


async def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_text("  \n")
    source = open_source(FileSourceConfig(path=path))
    with pytest.raises(MalformedTokenError, match="token is empty"):
        await source.read()


async def test_missing_file_fails_then_unavailable_keeping_last_token(tmp_path: Path) -> None:
    a = new_token()
    path = tmp_path / "t"
    path.write_text(a.reveal())
    clock = Clock()
    watcher = watcher_for(path, clock=clock)
    assert isinstance(await watcher.poll(), New)

    path.unlink()
    with pytest.raises(TokenSourceError, match="no such file") as info:
        await watcher.source.read()
    assert_safe(str(info.value), a)

    failed = await watcher.poll()
    assert isinstance(failed, Failed) and "no such file" in failed.reason
    assert failed.failing_since == clock.now and failed.failures == 1
    assert not watcher.unavailable
    clock.now += 29
    again = await watcher.poll()
    assert isinstance(again, Failed) and again.failures == 2
    assert again.failing_since == failed.failing_since
    assert not watcher.unavailable
    clock.now += 1
    assert watcher.unavailable
    assert watcher.current is not None and watcher.current.token == a

    replace_atomically(path, a.reveal())  # back, same token: no rollout needed
    assert isinstance(await watcher.poll(), Unchanged)
    assert not watcher.unavailable and watcher.failing_since is None


async def test_token_for_another_tunnel_is_never_new_and_reported_once(tmp_path: Path) -> None:
    ours = new_token()
    foreign = new_token()
    path = tmp_path / "t"
    path.write_text(foreign.reveal())
    watcher = watcher_for(path, tunnel_id=ours.tunnel_id.upper())
    event = await watcher.poll()
    assert isinstance(event, Refused)
    assert foreign.tunnel_id in event.reason and ours.tunnel_id in event.reason
    assert event.version == foreign.fingerprint
    assert_safe(event.reason, foreign, ours)
    for _ in range(3):
        assert isinstance(await watcher.poll(), Unchanged)
    assert watcher.current is None

    forced = await watcher.poll(force=True)  # rotate --force reports the standing refusal
    assert isinstance(forced, Refused)

    replace_atomically(path, ours.reveal())
    assert isinstance(await watcher.poll(), New)
    replace_atomically(path, foreign.reveal())  # back again after a good one: news again
    assert isinstance(await watcher.poll(), Refused)
    assert watcher.current is not None and watcher.current.token == ours


async def test_first_token_pins_the_tunnel_when_no_id_is_configured(tmp_path: Path) -> None:
    first = new_token()
    same_tunnel = new_token(first.tunnel_id)
    path = tmp_path / "t"
    path.write_text(first.reveal())
    watcher = watcher_for(path, tunnel_id=None)
    assert isinstance(await watcher.poll(), New)
    replace_atomically(path, new_token().reveal())
    assert isinstance(await watcher.poll(), Refused)
    replace_atomically(path, same_tunnel.reveal())
    event = await watcher.poll()
    assert isinstance(event, New) and event.version.token == same_tunnel


async def test_force_rereads_without_a_change(tmp_path: Path) -> None:
    a = new_token()
    path = tmp_path / "t"
    path.write_text(a.reveal())
    watcher = watcher_for(path)
    assert isinstance(await watcher.poll(), New)
    assert isinstance(await watcher.poll(force=True), Unchanged)
    assert watcher.current is not None and watcher.current.token == a


async def test_write_is_atomic_0600_and_read_back(tmp_path: Path) -> None:
    old, new = new_token(), new_token()
    path = tmp_path / "t"
    path.write_text(old.reveal())
    source = open_source(FileSourceConfig(path=path))
    before = await source.current_version()
    version = await source.write(new)
    assert version == new.fingerprint
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert await source.current_version() != before
    assert (await source.read()).token == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no temp file left behind


async def test_write_into_missing_directory_is_a_clean_error(tmp_path: Path) -> None:
    token = new_token()
    source = open_source(FileSourceConfig(path=tmp_path / "nope" / "t"))
    with pytest.raises(TokenSourceError, match="cannot write") as info:
        await source.write(token)
    assert_safe(str(info.value), token)


@pytest.mark.parametrize("kind", ["fifo", "directory", "huge", "binary", "unreadable"])
async def test_hostile_files_are_clean_errors(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "t"
    token = new_token()
    if kind == "fifo":
        os.mkfifo(path)  # reading must not block waiting for a writer
    elif kind == "directory":
        path.mkdir()
    elif kind == "huge":
        path.write_text(token.reveal() * 1000)
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe" + token.reveal().encode())
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        path.write_text(token.reveal())
        path.chmod(0)
    source = open_source(FileSourceConfig(path=path))
    with pytest.raises(TokenSourceError) as info:
        await source.read()
    assert str(path) in str(info.value)
    assert_safe(str(info.value), token)


def test_token_repr_stays_redacted() -> None:
    token: TunnelToken = new_token()
    assert token.reveal() not in f"{token} {token!r}"
