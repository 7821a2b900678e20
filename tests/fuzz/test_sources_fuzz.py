"""Token sources read hostile bytes: file contents, a command's stdout/stderr/exit status, and
the JSON a Vault KV v2 or AWS Secrets Manager endpoint answers. Only TokenSourceError (and its
MalformedTokenError) escapes, and no error or log line carries a token that was read."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.rawhttp import RawHTTPServer, Request, response
from tests.fuzz.strategies import (
    FUZZ,
    FUZZ_IO,
    corpus,
    deep_json,
    hostile_text,
    json_bytes,
    json_values,
    mutated,
    objects_with,
    tally,
)
from tunnelkeeper.config.model import AwsSourceConfig, VaultSourceConfig
from tunnelkeeper.sources import TokenSource, TokenSourceError, TokenVersion
from tunnelkeeper.sources.aws import AwsSecretsManagerSource
from tunnelkeeper.sources.command import CommandSource
from tunnelkeeper.sources.file import FileSource
from tunnelkeeper.sources.vault import VaultSource

TOKEN = corpus("tokens")[0].decode().strip()
SECRET_B64 = base64.b64encode(bytes(range(32))).decode()  # the corpus token's secret
token_texts = st.one_of(
    st.just(TOKEN),
    mutated("tokens").map(lambda b: b.decode("utf-8", errors="replace")),
    hostile_text,
)
file_bytes = st.one_of(
    mutated("tokens"),
    st.binary(max_size=200),
    token_texts.map(str.encode),
    st.sampled_from([b"", b"\n", TOKEN.encode() * 2, b"\xef\xbb\xbf" + TOKEN.encode()]),
)


def read_once(source: TokenSource, runner: asyncio.Runner | None = None) -> Any:
    """One read: a TokenVersion, or the TokenSourceError it raised (checked to be safe)."""

    async def go() -> TokenVersion:
        try:
            await source.current_version()
            return await source.read()
        finally:
            if runner is None:
                await source.aclose()

    try:
        got = runner.run(go()) if runner is not None else asyncio.run(go())
    except TokenSourceError as exc:
        tally(f"{type(exc).__name__}: {str(exc).split(': ', 1)[-1][:30]}")
        message = str(exc)
        assert TOKEN not in message and SECRET_B64 not in message
        # one clean line: nothing an endpoint answers can forge log lines or colour a terminal
        assert all(ch.isprintable() for ch in message), repr(message)
        return exc
    tally("token read")
    assert isinstance(got, TokenVersion)
    return got


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sources-fuzz")


@FUZZ
@given(file_bytes)
def test_file_contents(workdir: Path, data: bytes) -> None:
    path = workdir / "portal.token"
    path.write_bytes(data)
    read_once(FileSource(path))


# --- command ----------------------------------------------------------------------------------

SCRIPT = 'cat "$1"; cat "$2" >&2; exit "$3"'


@FUZZ_IO
@given(
    file_bytes | st.just(b"x" * 70_000),
    st.binary(max_size=200) | token_texts.map(lambda t: f"token is {t}\n{t}".encode()),
    st.sampled_from([0, 0, 1, 2, 127, 255]),
)
def test_command_outputs(workdir: Path, stdout: bytes, stderr: bytes, code: int) -> None:
    out, err = workdir / "stdout", workdir / "stderr"
    out.write_bytes(stdout)
    err.write_bytes(stderr)
    source = CommandSource(
        ("/bin/sh", "-c", SCRIPT, "sh", str(out), str(err), str(code)),
        timeout_seconds=10,
        env={},
        environ={"PATH": "/usr/bin:/bin"},
    )
    with structlog.testing.capture_logs() as logs:
        got = read_once(source)
    # stderr is logged, with every long word of stdout (and a token read from it) redacted
    hidden = [w for w in stdout.decode("utf-8", errors="replace").split() if len(w) >= 16]
    if isinstance(got, TokenVersion):
        assert code == 0
        hidden += [got.token.reveal(), base64.b64encode(got.token.secret).decode()]
    for entry in logs:
        for secret in hidden:
            assert secret not in str(entry)


# --- Vault / OpenBao KV v2 --------------------------------------------------------------------

_versions = st.dictionaries(
    st.sampled_from(["1", "2", "3"]) | hostile_text,
    objects_with(
        {
            "destroyed": st.booleans(),
            "deletion_time": st.sampled_from(["", "2020-01-01T00:00:00Z", "2999-01-01T00:00:00Z"]),
        }
    ),
    max_size=3,
)
metadata = objects_with(
    {"data": objects_with({"current_version": st.integers(-1, 3), "versions": _versions})}
)
secret_data = objects_with(
    {"data": objects_with({"data": objects_with({"token": token_texts}), "metadata": json_values})}
)
vault_bodies = {
    "metadata": st.one_of(metadata.map(json_bytes), st.just(corpus("vault")[1]), mutated("vault")),
    "data": st.one_of(secret_data.map(json_bytes), st.just(corpus("vault")[0]), mutated("vault")),
}
vault_statuses = st.sampled_from([200, 200, 200, 204, 400, 403, 404, 500, 503, 307])


@st.composite
def vault_answers(draw: st.DrawFn) -> dict[str, bytes]:
    return {
        kind: response(draw(vault_statuses), draw(bodies | json_values.map(json_bytes)))
        for kind, bodies in vault_bodies.items()
    }


@pytest.fixture(scope="module")
def fake_api() -> Iterator[RawHTTPServer]:
    with RawHTTPServer() as server:
        yield server


def _vault_source(server: RawHTTPServer, workdir: Path) -> VaultSource:
    token_file = workdir / "vault.token"
    token_file.write_text("hvs.not-a-real-vault-token\n")
    cfg = VaultSourceConfig(
        addr=server.url, path="tk/portal", token_file=token_file, timeout_seconds=5
    )
    return VaultSource(cfg, environ={})


@FUZZ_IO
@given(vault_answers())
def test_vault_answers(fake_api: RawHTTPServer, workdir: Path, answers: dict[str, bytes]) -> None:
    def answer(req: Request) -> bytes:
        return answers["metadata" if "/metadata/" in req.target else "data"]

    fake_api.answer = answer
    read_once(_vault_source(fake_api, workdir))


def test_vault_corpus_answers_give_the_token(fake_api: RawHTTPServer, workdir: Path) -> None:
    data, meta = corpus("vault")
    fake_api.answer = lambda req: response(200, meta if "/metadata/" in req.target else data)
    got = read_once(_vault_source(fake_api, workdir))
    assert isinstance(got, TokenVersion) and got.version == "2" and got.token.reveal() == TOKEN


def test_vault_deeply_nested_answer_is_a_source_error(
    fake_api: RawHTTPServer, workdir: Path
) -> None:
    fake_api.answer = lambda _req: response(200, deep_json(100_000))
    assert isinstance(read_once(_vault_source(fake_api, workdir)), TokenSourceError)


# --- AWS Secrets Manager ----------------------------------------------------------------------

_stages = st.dictionaries(
    st.uuids().map(str) | hostile_text,
    st.lists(st.sampled_from(["AWSCURRENT", "AWSPREVIOUS", "x"]), max_size=2) | json_values,
    max_size=3,
)
describe = objects_with({"VersionIdsToStages": _stages, "DeletedDate": st.sampled_from([1.0e9])})
secret_strings = token_texts | token_texts.map(lambda t: f'{{"token": "{t}"}}') | st.just("{")
get_value = objects_with(
    {
        "SecretString": secret_strings,
        "SecretBinary": st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
        "VersionId": st.uuids().map(str),
    }
)
aws_errors = st.builds(
    lambda kind, message: json_bytes({"__type": kind, "message": message}),
    st.sampled_from(
        ["ResourceNotFoundException", "AccessDeniedException", "DecryptionFailure", "Weird"]
    )
    | hostile_text,
    hostile_text,
)
aws_statuses = st.sampled_from([200, 200, 200, 400, 403])


@st.composite
def aws_answers(draw: st.DrawFn) -> dict[str, bytes]:
    def one(body: st.SearchStrategy[Any], real: bytes) -> bytes:
        status = draw(aws_statuses)
        if status != 200:
            return response(status, draw(aws_errors))
        kind = draw(st.sampled_from(["real", "real", "fuzzed", "raw"]))
        payload = {
            "real": real,
            "fuzzed": json_bytes(draw(body)),
            "raw": draw(st.binary(max_size=60)),
        }[kind]
        return response(200, payload, [("Content-Type", "application/x-amz-json-1.1")])

    real_describe, real_get = corpus("aws")
    return {
        "DescribeSecret": one(describe, real_describe),
        "GetSecretValue": one(get_value, real_get),
    }


@pytest.fixture(scope="module")
def aws_source(fake_api: RawHTTPServer) -> Iterator[tuple[AwsSecretsManagerSource, asyncio.Runner]]:
    fake_creds = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    with pytest.MonkeyPatch.context() as mp, asyncio.Runner() as runner:
        for key, value in fake_creds.items():
            mp.setenv(key, value)
        cfg = AwsSourceConfig(
            secret_id="tk/portal", region="us-east-1", endpoint_url=fake_api.url, timeout_seconds=5
        )
        source = AwsSecretsManagerSource(cfg)
        yield source, runner
        runner.run(source.aclose())


@FUZZ_IO
@given(aws_answers())
def test_aws_answers(
    fake_api: RawHTTPServer,
    aws_source: tuple[AwsSecretsManagerSource, asyncio.Runner],
    answers: dict[str, bytes],
) -> None:
    def answer(req: Request) -> bytes:
        return answers[req.headers.get("x-amz-target", ".").split(".")[-1]]

    fake_api.answer = answer
    source, runner = aws_source
    read_once(source, runner)


def test_aws_corpus_answers_give_the_token(
    fake_api: RawHTTPServer, aws_source: tuple[AwsSecretsManagerSource, asyncio.Runner]
) -> None:
    real = dict(zip(["DescribeSecret", "GetSecretValue"], corpus("aws"), strict=True))
    fake_api.answer = lambda req: response(200, real[req.headers["x-amz-target"].split(".")[-1]])
    got = read_once(*aws_source)
    assert isinstance(got, TokenVersion) and got.token.reveal() == TOKEN
    assert got.version == "5b3c1e2a-0000-4000-8000-000000000001"


def test_aws_error_code_is_shown_clean(
    fake_api: RawHTTPServer, aws_source: tuple[AwsSecretsManagerSource, asyncio.Runner]
) -> None:
    body = json_bytes({"__type": "Bad\nline\x1b[2J" + "x" * 500, "message": "m"})
    fake_api.answer = lambda _req: response(400, body)
    got = read_once(*aws_source)
    assert isinstance(got, TokenSourceError) and len(str(got)) < 300
