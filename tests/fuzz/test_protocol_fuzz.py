"""The simulator's connector<->edge messages come from a peer that is treated as hostile:
decode and the field_* readers raise ProtocolError and nothing else."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import (
    FUZZ,
    corpus,
    deep_json,
    hostile_text,
    json_bytes,
    json_values,
    mutated,
    objects_with,
    tally,
)
from tunnelkeeper.sim.protocol import (
    MESSAGE_TYPES,
    ProtocolError,
    decode,
    field_body,
    field_headers,
    field_int,
    field_str,
)

_headers = (
    st.lists(st.lists(hostile_text, min_size=2, max_size=2) | json_values, max_size=3) | json_values
)
messages = objects_with(
    {
        "type": st.sampled_from(sorted(MESSAGE_TYPES)),
        "id": st.integers(-1, 2**64),
        "status": st.integers(0, 999),
        "token": hostile_text,
        "conn_index": st.integers(0, 3),
        "headers": _headers,
        "body": st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode()),
        "path": hostile_text,
    }
)
texts = st.one_of(
    messages.map(json_bytes),
    mutated("protocol"),
    json_values.map(json_bytes),
    st.binary(max_size=200),
)


def read_all(msg: dict[str, Any]) -> None:
    """Every field reader on every key a handler might ask for."""
    readers: list[Callable[[], object]] = [
        lambda: field_str(msg, "token"),
        lambda: field_str(msg, "path", "/"),
        lambda: field_int(msg, "id"),
        lambda: field_int(msg, "status"),
        lambda: field_headers(msg),
        lambda: field_body(msg),
    ]
    for read in readers:
        try:
            read()
        except ProtocolError as exc:
            assert str(exc)


@FUZZ
@given(texts, st.booleans())
def test_messages(data: bytes, as_text: bool) -> None:
    raw: str | bytes = data.decode("utf-8", errors="replace") if as_text else data
    try:
        msg = decode(raw)
    except ProtocolError:
        tally("refused")
        return
    tally(f"decoded {msg['type']}")
    assert msg["type"] in MESSAGE_TYPES
    read_all(msg)


def test_corpus_messages_decode() -> None:
    kinds = [decode(sample)["type"] for sample in corpus("protocol")]
    assert kinds == ["register", "request", "response"]
    request = decode(corpus("protocol")[1])
    assert field_body(request) == b"hello" and field_headers(request)[0] == ("accept", "*/*")


@pytest.mark.parametrize("raw", [b'{"type": []}', b'{"type": {"a": 1}}'])
def test_unhashable_type_is_a_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(raw)


def test_deeply_nested_message_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode(deep_json(100_000))
