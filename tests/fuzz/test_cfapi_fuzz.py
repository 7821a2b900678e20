"""The Cloudflare API client against a server answering hostile statuses, headers and bodies:
only CloudflareAPIError (RateLimited with a bounded wait) escapes; get_token may also refuse the
token itself with InvalidTokenError, as its callers expect."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.rawhttp import RawHTTPServer, response
from tests.fuzz.strategies import (
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
from tunnelkeeper.cloudflare.api import CloudflareAPI, CloudflareAPIError, Connector, RateLimited
from tunnelkeeper.errors import InvalidTokenError
from tunnelkeeper.tunneltoken import TunnelToken

TUNNEL = "c1744f8b-faa1-48a4-9e5c-02ac921467fa"
ACCOUNT = "699d98642c564d2e855e9661899b7252"
METHODS = ["get_tunnel", "list_connectors", "get_token", "refresh_secret", "delete_connections"]

conn_objects = objects_with(
    {
        "id": st.uuids().map(str),
        "client_id": st.uuids().map(str),
        "colo_name": st.sampled_from(["fra06", "x" * 100]),
        "is_pending_reconnect": st.booleans(),
    }
)
safe_conns = st.lists(conn_objects | json_values, max_size=5) | st.sampled_from(
    [None, {}, "", "abc", 0, False, {"id": "x"}, 5, 1.5, True]
)
connectors = objects_with(
    {"id": st.uuids().map(str), "version": st.sampled_from(["2026.8.2"]) | hostile_text}
).flatmap(
    lambda item: st.fixed_dictionaries({}, optional={"conns": safe_conns}).map(
        lambda extra: {**item, **extra}
    )
)
tokens = st.sampled_from([corpus("tokens")[0].decode().strip()]) | mutated("tokens").map(
    lambda b: b.decode("utf-8", errors="replace")
)
results = st.one_of(
    st.lists(connectors | st.none() | hostile_text, max_size=4),
    objects_with({"id": st.just(TUNNEL), "name": st.just("portal")}),
    tokens,
    st.none(),
    hostile_text,
)
errors = st.lists(
    objects_with({"code": st.integers(1000, 10999), "message": hostile_text}) | json_values,
    max_size=4,
)
envelopes = st.fixed_dictionaries(
    {"success": st.just(True), "errors": st.just([]), "messages": st.just([]), "result": results}
) | objects_with(
    {
        "success": st.booleans(),
        "errors": errors,
        "messages": st.just([]),
        "result": results,
    }
)
bodies = st.one_of(
    envelopes.map(json_bytes),
    st.sampled_from(corpus("cfapi")),
    mutated("cfapi"),
    json_values.map(json_bytes),
    st.binary(max_size=100),
)
retry_afters = st.sampled_from(
    ["", "5", "0", "-1", "nan", "inf", "-inf", "1e999", "3601", "Wed, 21 Oct 2015 07:28:00 GMT"]
) | st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=30)
statuses = st.sampled_from([200, 200, 200, 201, 400, 403, 404, 429, 500, 503, 100, 999])


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    status = draw(statuses)
    body = draw(bodies)
    headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
    if draw(st.booleans()):
        headers.append(("Retry-After", draw(retry_afters)))
    if draw(st.sampled_from(["http"] * 9 + ["raw"])) == "raw":  # need not be HTTP at all
        return draw(st.binary(max_size=200))
    return response(status, body, headers)


@pytest.fixture(scope="module")
def server() -> Iterator[RawHTTPServer]:
    with RawHTTPServer() as s:
        yield s


async def _call(url: str, method: str) -> Any:
    api = CloudflareAPI(url, ACCOUNT, "api-token-not-a-secret", timeout_seconds=5)
    try:
        if method == "get_tunnel":
            return await api.get_tunnel(TUNNEL)
        if method == "list_connectors":
            return await api.list_connectors(TUNNEL)
        if method == "get_token":
            return await api.get_token(TUNNEL)
        if method == "refresh_secret":
            return await api.refresh_secret(TUNNEL)
        return await api.delete_connections(
            TUNNEL, client_id="07749b78-c503-4541-9df6-6348bddb3aa7"
        )
    finally:
        await api.aclose()


def outcome(server: RawHTTPServer, answer: bytes, method: str) -> Any:
    server.answer = lambda _req: answer
    try:
        result = asyncio.run(_call(server.url, method))
    except RateLimited as exc:
        tally("rate limited")
        assert math.isfinite(exc.retry_after_seconds) and 1 <= exc.retry_after_seconds <= 3600
        return exc
    except CloudflareAPIError as exc:
        tally(f"api error {str(exc)[:28]}")
        assert str(exc) and "api-token-not-a-secret" not in str(exc)
        return exc
    except InvalidTokenError as exc:
        assert method == "get_token"
        tally("token refused")
        return exc
    tally(f"{method} ok")
    if method == "list_connectors":
        assert isinstance(result, list) and all(isinstance(c, Connector) for c in result)
        for c in result:
            assert len(c.version) <= 40 and c.live_connections <= len(c.conns)
    elif method == "get_token":
        assert isinstance(result, TunnelToken)
    elif method == "get_tunnel":
        assert isinstance(result, dict)
    return result


@FUZZ_IO
@given(answers(), st.sampled_from(METHODS))
def test_hostile_answers(server: RawHTTPServer, answer: bytes, method: str) -> None:
    outcome(server, answer, method)


def test_corpus_answers_parse(server: RawHTTPServer) -> None:
    samples = dict(zip(["connections", "error", "token", "tunnel"], corpus("cfapi"), strict=True))
    got = outcome(server, response(200, samples["connections"]), "list_connectors")
    assert [c.live_connections for c in got] == [2]
    assert isinstance(outcome(server, response(200, samples["token"]), "get_token"), TunnelToken)
    assert outcome(server, response(200, samples["tunnel"]), "get_tunnel")["name"] == "portal"
    error = outcome(server, response(404, samples["error"]), "get_tunnel")
    assert isinstance(error, CloudflareAPIError) and "7003: No route for the URI" in str(error)
    limited = outcome(server, response(429, b"", [("Retry-After", "1e999")]), "get_tunnel")
    assert isinstance(limited, RateLimited) and limited.retry_after_seconds == 3600


@pytest.mark.parametrize("conns", [5, 1.5, True])
def test_connector_with_scalar_conns_is_an_api_error(server: RawHTTPServer, conns: Any) -> None:
    body = json_bytes(
        {"success": True, "errors": [], "messages": [], "result": [{"id": TUNNEL, "conns": conns}]}
    )
    got = outcome(server, response(200, body), "list_connectors")
    assert isinstance(got, CloudflareAPIError) or got[0].conns == ()


def test_deeply_nested_body_is_an_api_error(server: RawHTTPServer) -> None:
    got = outcome(server, response(200, deep_json(100_000)), "get_tunnel")
    assert isinstance(got, CloudflareAPIError)
