"""Vault KV v2 source against a real OpenBao dev server on loopback."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from structlog.testing import capture_logs

from tests.sources.conftest import AppRole, Bao, assert_safe, new_token
from tests.waiting import free_port
from tunnelkeeper.config.model import VaultSourceConfig
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
from tunnelkeeper.sources.vault import VaultSource


def token_file(tmp_path: Path, value: str) -> Path:
    path = tmp_path / "vault-token"
    path.write_text(value + "\n")
    return path


def cfg_for(bao: Bao, path: str, tmp_path: Path, **kw: object) -> VaultSourceConfig:
    if "token_file" not in kw:
        kw["token_file"] = token_file(tmp_path, bao.root_token)
    return VaultSourceConfig(addr=bao.addr, path=path, timeout_seconds=5, **kw)  # type: ignore[arg-type]


async def test_reads_token_and_detects_new_versions(bao: Bao, kv_path: str, tmp_path: Path) -> None:
    a = new_token()
    b = new_token(a.tunnel_id)
    bao.put(kv_path, {"token": a.reveal()})
    source = open_source(cfg_for(bao, kv_path, tmp_path))
    try:
        assert source.description == f"vault {bao.addr} secret/{kv_path}#token"
        assert source.is_writable and not source.is_static
        assert await source.current_version() == "1"
        got = await source.read()
        assert got.token == a and got.version == "1"

        watcher = TokenWatcher(source, tunnel_id=a.tunnel_id, unavailable_after_seconds=30)
        assert isinstance(await watcher.poll(), New)
        assert isinstance(await watcher.poll(), Unchanged)
        bao.put(kv_path, {"token": b.reveal()})
        event = await watcher.poll()
        assert isinstance(event, New) and event.version.token == b and event.version.version == "2"
        bao.put(kv_path, {"token": b.reveal()})  # same value, new version id: nothing to roll
        assert isinstance(await watcher.poll(), Unchanged)
        assert watcher.current is not None and watcher.current.version == "3"
    finally:
        await source.aclose()


async def test_write_adds_a_version_and_keeps_other_fields(
    bao: Bao, kv_path: str, tmp_path: Path
) -> None:
    a = new_token()
    b = new_token(a.tunnel_id)
    bao.put(kv_path, {"token": a.reveal(), "owner": "ops"})
    source = open_source(cfg_for(bao, kv_path, tmp_path))
    try:
        assert await source.write(b) == "2"
        data = bao.api("GET", f"secret/data/{kv_path}")["data"]["data"]
        assert data == {"token": b.reveal(), "owner": "ops"}
        assert (await source.read()).token == b
    finally:
        await source.aclose()


async def test_write_creates_a_missing_secret(bao: Bao, kv_path: str, tmp_path: Path) -> None:
    token = new_token()
    source = open_source(cfg_for(bao, kv_path, tmp_path, field="value"))
    try:
        assert await source.write(token) == "1"
        assert (await source.read()).token == token
    finally:
        await source.aclose()


async def test_missing_path_is_a_clean_error(bao: Bao, kv_path: str, tmp_path: Path) -> None:
    source = open_source(cfg_for(bao, kv_path, tmp_path))
    try:
        with pytest.raises(TokenSourceError, match=f"no secret at secret/{kv_path}"):
            await source.read()
    finally:
        await source.aclose()


async def test_deleted_or_destroyed_current_version_keeps_the_old_token(
    bao: Bao, kv_path: str, tmp_path: Path
) -> None:
    a = new_token()
    b = new_token(a.tunnel_id)
    bao.put(kv_path, {"token": a.reveal()})
    source = open_source(cfg_for(bao, kv_path, tmp_path))
    watcher = TokenWatcher(source, tunnel_id=a.tunnel_id, unavailable_after_seconds=30)
    try:
        assert isinstance(await watcher.poll(), New)
        bao.put(kv_path, {"token": b.reveal()})
        bao.api("DELETE", f"secret/data/{kv_path}")  # soft-deletes the latest (version 2)
        event = await watcher.poll()
        assert isinstance(event, Failed)
        assert "no usable current version (version 2 is deleted)" in event.reason
        assert watcher.current is not None and watcher.current.token == a

        bao.api("POST", f"secret/undelete/{kv_path}", {"versions": [2]})
        assert isinstance(await watcher.poll(), New)
        bao.api("POST", f"secret/destroy/{kv_path}", {"versions": [2]})
        with pytest.raises(TokenSourceError, match="version 2 is destroyed") as info:
            await source.read()
        assert_safe(str(info.value), a, b)
    finally:
        await source.aclose()


async def test_bad_values_are_refused_once(bao: Bao, kv_path: str, tmp_path: Path) -> None:
    good = new_token()
    bao.put(kv_path, {"token": good.reveal()[:-8]})
    source = open_source(cfg_for(bao, kv_path, tmp_path))
    watcher = TokenWatcher(source, tunnel_id=good.tunnel_id, unavailable_after_seconds=30)
    try:
        event = await watcher.poll()
        assert isinstance(event, Refused) and event.version == "1"
        assert_safe(event.reason, good)
        assert isinstance(await watcher.poll(), Unchanged)
        bao.put(kv_path, {"other": "x"})
        event = await watcher.poll()
        assert isinstance(event, Refused) and "no text field 'token'" in event.reason
        bao.put(kv_path, {"token": new_token().reveal()})  # another tunnel's token
        event = await watcher.poll()
        assert isinstance(event, Refused) and "is for tunnel" in event.reason
        bao.put(kv_path, {"token": good.reveal()})
        assert isinstance(await watcher.poll(), New)
    finally:
        await source.aclose()


async def test_token_file_is_reread_after_403(bao: Bao, kv_path: str, tmp_path: Path) -> None:
    token = new_token()
    bao.put(kv_path, {"token": token.reveal()})

    def child_token() -> str:
        created = bao.api("POST", "auth/token/create", {"policies": ["default"], "ttl": "1h"})
        return str(created["auth"]["client_token"])

    def revoke(vault_token: str) -> None:
        bao.api("POST", "auth/token/revoke", {"token": vault_token})

    policy = f'path "secret/data/{kv_path}" {{ capabilities = ["read"] }}\n'
    policy += f'path "secret/metadata/{kv_path}" {{ capabilities = ["read"] }}\n'
    bao.api("PUT", "sys/policies/acl/tk-file", {"policy": policy})
    first = bao.api("POST", "auth/token/create", {"policies": ["tk-file"], "ttl": "1h"})
    path = token_file(tmp_path, first["auth"]["client_token"])
    source = open_source(cfg_for(bao, kv_path, tmp_path, token_file=path))
    try:
        assert (await source.read()).token == token
        # an agent renews the token: the old one is revoked, the file gets a new one
        revoke(first["auth"]["client_token"])
        second = bao.api("POST", "auth/token/create", {"policies": ["tk-file"], "ttl": "1h"})
        path.write_text(second["auth"]["client_token"])
        assert (await source.read()).token == token
        # revoked and not replaced: permission denied, and writes are refused too
        revoke(second["auth"]["client_token"])
        with pytest.raises(TokenSourceError, match="permission denied") as info:
            await source.read()
        assert_safe(str(info.value), token)
        path.write_text(child_token())  # a token without the policy
        with pytest.raises(TokenSourceError, match="permission denied"):
            await source.write(new_token(token.tunnel_id))
    finally:
        await source.aclose()


async def test_approle_reads_and_cannot_write(
    bao: Bao, approle: AppRole, tmp_path: Path, kv_path: str
) -> None:
    token = new_token()
    bao.put(kv_path, {"token": token.reveal()})
    cfg = VaultSourceConfig(
        addr=bao.addr,
        path=kv_path,
        role_id_file=approle.role_id_file,
        secret_id_file=approle.secret_id_file,
    )
    source = open_source(cfg)
    try:
        with capture_logs() as logs:
            assert (await source.read()).token == token
        assert [e["event"] for e in logs].count("vault_logged_in") == 1
        with pytest.raises(TokenSourceError, match="permission denied") as info:
            await source.write(new_token(token.tunnel_id))
        assert_safe(str(info.value), token)
    finally:
        await source.aclose()


async def test_approle_logs_in_again_after_revocation(
    bao: Bao, approle: AppRole, kv_path: str
) -> None:
    token = new_token()
    bao.put(kv_path, {"token": token.reveal()})
    cfg = VaultSourceConfig(
        addr=bao.addr,
        path=kv_path,
        role_id_file=approle.role_id_file,
        secret_id_file=approle.secret_id_file,
    )
    source = open_source(cfg)
    try:
        await source.read()
        listed = bao.api("LIST", "auth/token/accessors")["data"]["keys"]
        for accessor in listed:
            info = bao.api("POST", "auth/token/lookup-accessor", {"accessor": accessor})
            if info["data"]["path"] == "auth/approle/login":
                bao.api("POST", "auth/token/revoke-accessor", {"accessor": accessor})
        with capture_logs() as logs:
            assert (await source.read()).token == token
        assert [e["event"] for e in logs].count("vault_logged_in") == 1
    finally:
        await source.aclose()


async def test_approle_token_is_renewed_at_two_thirds_of_its_lease(
    bao: Bao, approle: AppRole, kv_path: str
) -> None:
    token = new_token()
    bao.put(kv_path, {"token": token.reveal()})
    now = [0.0]
    cfg = VaultSourceConfig(
        addr=bao.addr,
        path=kv_path,
        role_id_file=approle.role_id_file,
        secret_id_file=approle.secret_id_file,
    )
    source = VaultSource(cfg, clock=lambda: now[0])
    try:
        with capture_logs() as logs:
            await source.read()
            now[0] = 2300.0  # token_ttl is 1 h: not yet due
            await source.read()
            now[0] = 2500.0  # past 2/3 of 3600 s
            assert (await source.read()).token == token
        events = [e["event"] for e in logs]
        assert events.count("vault_logged_in") == 1
        assert events.count("vault_token_renewed") == 1
    finally:
        await source.aclose()


async def test_approle_bad_secret_id_is_a_clean_error(
    bao: Bao, approle: AppRole, kv_path: str, tmp_path: Path
) -> None:
    wrong = tmp_path / "secret_id"
    wrong.write_text("00000000-0000-0000-0000-000000000000")
    cfg = VaultSourceConfig(
        addr=bao.addr, path=kv_path, role_id_file=approle.role_id_file, secret_id_file=wrong
    )
    source = open_source(cfg)
    try:
        with pytest.raises(TokenSourceError, match="AppRole login refused"):
            await source.read()
    finally:
        await source.aclose()


async def test_unreachable_vault_is_a_clean_error(tmp_path: Path) -> None:
    cfg = VaultSourceConfig(
        addr=f"http://127.0.0.1:{free_port()}",
        path="tk/x",
        token_file=token_file(tmp_path, "s.whatever"),
        timeout_seconds=2,
    )
    source = open_source(cfg)
    try:
        with pytest.raises(TokenSourceError, match="vault unreachable"):
            await source.current_version()
    finally:
        await source.aclose()


async def test_misconfigured_auth_and_tls_are_clean_errors(bao: Bao, tmp_path: Path) -> None:
    base = VaultSourceConfig(addr=bao.addr, path="tk/x")
    with pytest.raises(TokenSourceError, match="set token_file"):
        open_source(base)
    with pytest.raises(TokenSourceError, match="needs role_id_file and secret_id_file"):
        open_source(msgspec.structs.replace(base, role_id_file=tmp_path / "r"))
    bad_ca = msgspec.structs.replace(
        base, token_file=token_file(tmp_path, "t"), ca_cert=tmp_path / "missing-ca.pem"
    )
    source = open_source(bad_ca)
    try:
        with pytest.raises(TokenSourceError, match="cannot load CA certificate"):
            await source.current_version()
    finally:
        await source.aclose()
    with capture_logs() as logs:
        skipping = open_source(
            msgspec.structs.replace(bad_ca, addr=bao.addr), environ={"VAULT_SKIP_VERIFY": "true"}
        )
        try:
            with pytest.raises(TokenSourceError, match="permission denied"):
                await skipping.current_version()  # plain http here; the point is the warning
        finally:
            await skipping.aclose()
    assert any(e["event"] == "vault_tls_verify_disabled" for e in logs)


async def test_malformed_error_carries_the_version(bao: Bao, kv_path: str, tmp_path: Path) -> None:
    bao.put(kv_path, {"token": "not a token"})
    source = open_source(cfg_for(bao, kv_path, tmp_path))
    try:
        with pytest.raises(MalformedTokenError) as info:
            await source.read()
        assert info.value.version == "1"
        assert "not a token" not in str(info.value)
    finally:
        await source.aclose()
