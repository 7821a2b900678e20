"""AWS Secrets Manager source against a real moto server on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import boto3
import pytest

from tests.sources.conftest import assert_safe, new_token
from tests.waiting import free_port
from tunnelkeeper.config.model import AwsSourceConfig
from tunnelkeeper.sources import (
    New,
    Refused,
    TokenSourceError,
    TokenWatcher,
    Unchanged,
    open_source,
)

pytestmark = pytest.mark.usefixtures("aws_env")


def client(url: str) -> Any:
    return boto3.client("secretsmanager", endpoint_url=url, region_name="us-east-1")


def current_id(sm: Any, name: str) -> str:
    stages = sm.describe_secret(SecretId=name)["VersionIdsToStages"]
    return str(next(v for v, names in stages.items() if "AWSCURRENT" in names))


@pytest.fixture
def secret_name() -> str:
    return f"tk/{uuid.uuid4().hex[:12]}"


async def test_reads_current_and_detects_a_new_version(moto_url: str, secret_name: str) -> None:
    sm = client(moto_url)
    a = new_token()
    b = new_token(a.tunnel_id)
    sm.create_secret(Name=secret_name, SecretString=a.reveal())
    cfg = AwsSourceConfig(secret_id=secret_name, region="us-east-1", endpoint_url=moto_url)
    source = open_source(cfg)
    try:
        assert source.is_writable and not source.is_static
        assert source.description == f"aws-secrets-manager {secret_name} (us-east-1)"
        got = await source.read()
        assert got.token == a and got.version == current_id(sm, secret_name)

        watcher = TokenWatcher(source, tunnel_id=a.tunnel_id, unavailable_after_seconds=60)
        assert isinstance(await watcher.poll(), New)
        assert isinstance(await watcher.poll(), Unchanged)
        sm.put_secret_value(SecretId=secret_name, SecretString=json.dumps({"token": b.reveal()}))
        event = await watcher.poll()
        assert isinstance(event, New) and event.version.token == b
        assert event.version.version == current_id(sm, secret_name)
        assert isinstance(await watcher.poll(), Unchanged)
    finally:
        await source.aclose()


async def test_write_moves_awscurrent_and_keeps_json_shape(moto_url: str, secret_name: str) -> None:
    sm = client(moto_url)
    a = new_token()
    b = new_token(a.tunnel_id)
    sm.create_secret(
        Name=secret_name, SecretString=json.dumps({"token": a.reveal(), "env": "prod"})
    )
    source = open_source(AwsSourceConfig(secret_id=secret_name, endpoint_url=moto_url))
    try:
        version = await source.write(b)
        assert version == current_id(sm, secret_name)
        stored = json.loads(sm.get_secret_value(SecretId=secret_name)["SecretString"])
        assert stored == {"token": b.reveal(), "env": "prod"}
        previous = sm.get_secret_value(SecretId=secret_name, VersionStage="AWSPREVIOUS")
        assert json.loads(previous["SecretString"])["token"] == a.reveal()
        assert (await source.read()).token == b
    finally:
        await source.aclose()


async def test_bad_values_are_refused(moto_url: str, secret_name: str) -> None:
    sm = client(moto_url)
    good = new_token()
    sm.create_secret(Name=secret_name, SecretString=json.dumps({"tok": good.reveal()}))
    source = open_source(AwsSourceConfig(secret_id=secret_name, endpoint_url=moto_url))
    watcher = TokenWatcher(source, tunnel_id=good.tunnel_id, unavailable_after_seconds=60)
    try:
        event = await watcher.poll()
        assert isinstance(event, Refused) and 'no text "token" key' in event.reason
        assert_safe(event.reason, good)
        assert isinstance(await watcher.poll(), Unchanged)
        sm.put_secret_value(SecretId=secret_name, SecretString=good.reveal()[:-4])
        event = await watcher.poll()
        assert isinstance(event, Refused) and event.version == current_id(sm, secret_name)
        assert_safe(event.reason, good)
        sm.put_secret_value(SecretId=secret_name, SecretString=good.reveal())
        assert isinstance(await watcher.poll(), New)
    finally:
        await source.aclose()


async def test_missing_secret_is_a_clean_error(moto_url: str, secret_name: str) -> None:
    token = new_token()
    source = open_source(AwsSourceConfig(secret_id=secret_name, endpoint_url=moto_url))
    try:
        with pytest.raises(TokenSourceError, match=f"no secret '{secret_name}'"):
            await source.read()
        with pytest.raises(TokenSourceError, match="no secret") as info:
            await source.write(token)
        assert_safe(str(info.value), token)
    finally:
        await source.aclose()


async def test_unreachable_endpoint_is_a_clean_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    source = open_source(AwsSourceConfig(secret_id="tk/x", endpoint_url=url, timeout_seconds=2))
    try:
        with pytest.raises(TokenSourceError, match="AWS endpoint unreachable"):
            await source.current_version()
    finally:
        await source.aclose()


async def test_secret_scheduled_for_deletion_is_an_error(moto_url: str, secret_name: str) -> None:
    sm = client(moto_url)
    sm.create_secret(Name=secret_name, SecretString=new_token().reveal())
    sm.delete_secret(SecretId=secret_name, RecoveryWindowInDays=7)
    source = open_source(AwsSourceConfig(secret_id=secret_name, endpoint_url=moto_url))
    try:
        with pytest.raises(TokenSourceError, match="scheduled for deletion"):
            await source.read()
    finally:
        await source.aclose()


def test_missing_boto3_says_what_to_install() -> None:
    code = (
        "import asyncio, sys\n"
        "sys.modules['boto3'] = None  # as if tunnelkeeper[aws] were not installed\n"
        "from tunnelkeeper.config.model import AwsSourceConfig\n"
        "from tunnelkeeper.sources import TokenSourceError, open_source\n"
        "src = open_source(AwsSourceConfig(secret_id='tk/x', region='us-east-1'))\n"
        "try:\n"
        "    asyncio.run(src.current_version())\n"
        "except TokenSourceError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "install tunnelkeeper[aws]" in done.stdout
