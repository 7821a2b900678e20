from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnelkeeper.errors import InvalidTokenError
from tunnelkeeper.tunneltoken import TunnelToken

TID = "0b6a7f3e-2f4c-4d8e-9a51-6c2d7e1f3a90"  # fixed: test ids must not vary between runs


def test_build_encodes_like_cloudflare_and_parses_back() -> None:
    tok = TunnelToken.build("a" * 32, TID, b"s" * 32)
    assert tok.reveal().startswith("eyJhIjoi")
    back = TunnelToken.parse("  " + tok.reveal() + "\n")
    assert back == tok and back.tunnel_id == TID and back.secret == b"s" * 32


def test_tokens_are_equal_by_what_they_say_not_by_their_texts_formatting() -> None:
    tok = TunnelToken.build("a" * 32, TID, b"s" * 32)
    spaced = json.dumps({"a": "a" * 32, "t": TID, "s": base64.b64encode(b"s" * 32).decode()})
    same = TunnelToken.parse(base64.b64encode(spaced.encode()).decode())
    assert same.reveal() != tok.reveal() and same == tok and hash(same) == hash(tok)
    assert same.fingerprint != tok.fingerprint  # of the text: what the replica runs with
    assert TunnelToken.build("a" * 32, TID, b"t" * 32) != tok


def test_repr_and_str_never_show_the_token() -> None:
    tok = TunnelToken.build("a" * 32, TID, b"k" * 32)
    rich = repr(list(tok.__rich_repr__()))  # rich (a traceback's locals) asks this, not repr
    for text in (repr(tok), str(tok), f"{tok}", repr([tok]), rich):
        assert tok.reveal() not in text
        assert base64.b64encode(b"k" * 32).decode() not in text
        assert tok.fingerprint in text


@pytest.mark.parametrize(
    "raw,reason",
    [
        ("", "empty"),
        ("not base64!!", "base64"),
        (base64.urlsafe_b64encode(b'{"a":"xy"}').decode().rstrip("="), "base64"),
        (base64.b64encode(b"[1,2]").decode(), "object"),
        (base64.b64encode(json.dumps({"t": TID, "s": "c2VjcmV0"}).encode()).decode(), "account"),
        (
            base64.b64encode(
                json.dumps({"a": "x", "t": "nope", "s": "c2VjcmV0"}).encode()
            ).decode(),
            "UUID",
        ),
        (
            base64.b64encode(json.dumps({"a": "x", "t": TID, "s": "***"}).encode()).decode(),
            "secret",
        ),
    ],
)
def test_bad_tokens_are_refused_without_quoting_them(raw: str, reason: str) -> None:
    with pytest.raises(InvalidTokenError) as err:
        TunnelToken.parse(raw)
    assert reason in str(err.value)
    if raw:
        assert raw not in str(err.value)


@given(st.text(max_size=300))
def test_parse_raises_only_invalid_token_error(text: str) -> None:
    try:
        TunnelToken.parse(text)
    except InvalidTokenError:
        pass
