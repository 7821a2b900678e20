"""Fixtures for token-source tests: tokens; the real OpenBao (``bao``) and moto (``moto_url``)
servers come from tests/servers.py."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Callable

import pytest

from tests.servers import AWS_ENV, AppRole, Bao, make_approle
from tunnelkeeper.tunneltoken import TunnelToken

ACCOUNT = "5ab4e9dfbd435d24068829fda0077963"


def new_token(tunnel_id: str | None = None) -> TunnelToken:
    return TunnelToken.build(ACCOUNT, tunnel_id or str(uuid.uuid4()), os.urandom(32))


def assert_safe(message: str, *tokens: TunnelToken) -> None:
    """An error or log text must never carry a token or its secret."""
    for token in tokens:
        assert token.reveal() not in message
        assert base64.b64encode(token.secret).decode() not in message
        assert token.reveal()[8:40] not in message


@pytest.fixture
def make_token() -> Callable[..., TunnelToken]:
    return new_token


@pytest.fixture(scope="module")
def approle(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> AppRole:
    """AppRole ``tk`` with a read-only policy on secret/tk/* (as in secrets.md §5)."""
    return make_approle(bao, tmp_path_factory.mktemp("approle"), "tk", ["read"])


@pytest.fixture
def kv_path() -> str:
    return f"tk/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials, and never a probe of the instance-metadata address."""
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    for key in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
