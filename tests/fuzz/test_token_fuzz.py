"""Tunnel tokens from anywhere (files, secret stores, the API): only InvalidTokenError escapes,
and neither an error nor a parsed token's str/repr quotes the text."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import (
    FUZZ,
    corpus,
    deep_json,
    hostile_text,
    json_values,
    mutated,
    objects_with,
    tally,
)
from tunnelkeeper.errors import InvalidTokenError
from tunnelkeeper.tunneltoken import MAX_TOKEN_CHARS, TunnelToken

b64_texts = st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode())
plausible = {
    "a": st.sampled_from(["699d98642c564d2e855e9661899b7252", ""]) | hostile_text,
    "t": st.uuids().map(str) | st.uuids().map(lambda u: u.hex.upper()) | hostile_text,
    "s": b64_texts | b64_texts.map(lambda s: s.rstrip("=")) | hostile_text,
    "e": st.sampled_from(["fed"]) | hostile_text,
}
# mostly well-formed tokens with one or two fields wrong, plus anything at all
token_fields = st.one_of(
    st.fixed_dictionaries(
        {k: plausible[k] for k in "ats"}, optional={"e": plausible["e"], "x": json_values}
    ),
    objects_with(plausible),
)


def _encode(obj: Any, how: str) -> str:
    raw = json.dumps(obj, allow_nan=True).encode()
    if how == "urlsafe":
        return base64.urlsafe_b64encode(raw).decode()
    text = base64.b64encode(raw).decode()
    return {
        "std": text,
        "unpadded": text.rstrip("="),
        "wrapped": "\n".join(text[i : i + 20] for i in range(0, len(text), 20)),
        "quoted": f'"{text}"',
        "bom": "\ufeff" + text,
        "spaced": f"  {text}\n",
    }[how]


# half the time an encoding Cloudflare would produce
encodings = st.sampled_from(["std", "spaced"]) | st.sampled_from(
    ["urlsafe", "unpadded", "wrapped", "quoted", "bom"]
)


def check(text: str) -> None:
    """Parse ``text``: a valid token keeps its invariants, anything else is InvalidTokenError
    with a message that does not quote the text."""
    try:
        token = TunnelToken.parse(text)
    except InvalidTokenError as exc:
        message = str(exc)
        tally("refused: " + message.split(" (")[0].split(" is ")[0].split(" does")[0][:40])
        assert message and "\n" not in message
        core = text.strip()
        if len(core) >= 16:
            assert core not in message
            assert core[4:20] not in message
        return
    tally("parsed")
    assert token.reveal() == text.strip()
    assert str(uuid.UUID(token.tunnel_id)) == token.tunnel_id
    assert token.secret and token.account_tag
    secret_b64 = base64.b64encode(token.secret).decode()
    for shown in (str(token), repr(token)):
        assert token.reveal() not in shown
        assert secret_b64 not in shown
    assert TunnelToken.parse(token.reveal()) == token  # parsing is stable


@FUZZ
@given(token_fields, encodings)
def test_structured_tokens(obj: dict[str, Any], how: str) -> None:
    check(_encode(obj, how))


@FUZZ
@given(json_values, encodings)
def test_any_json_as_a_token(value: Any, how: str) -> None:
    check(_encode(value, how))


@FUZZ
@given(mutated("tokens"))
def test_mutations_of_a_real_token(data: bytes) -> None:
    check(data.decode("utf-8", errors="surrogateescape"))


@FUZZ
@given(
    st.text(max_size=MAX_TOKEN_CHARS + 50)
    | st.text(alphabet="ABCDEFGHabcdefgh0123+/=", max_size=200)
)
def test_arbitrary_text(text: str) -> None:
    check(text)


def test_the_corpus_token_is_valid() -> None:
    token = TunnelToken.parse(corpus("tokens")[0].decode())
    assert token.tunnel_id == "c1744f8b-faa1-48a4-9e5c-02ac921467fa"


@pytest.mark.parametrize("closed", [True, False], ids=["closed", "unterminated"])
def test_deeply_nested_token_json_is_an_invalid_token(closed: bool) -> None:
    text = base64.b64encode(deep_json(1500 if closed else 3000, closed=closed)).decode()
    assert len(text) <= MAX_TOKEN_CHARS  # it gets past the size check
    with pytest.raises(InvalidTokenError):
        TunnelToken.parse(text)
