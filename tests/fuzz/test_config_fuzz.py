"""Config files built from the real key schema, with wrong types and values and a tunnel token
pasted where it does not belong, written out as TOML text: only ConfigError comes out, each
problem is one line that points at a line of the file, and no problem quotes the token.

tests/config/test_fuzz.py fuzzes arbitrary text and parsed data; this adds whole documents that
get past the TOML parser and deep into every section's validator, rendered in the table styles
people write (``[table]``, inline tables, arrays of tables).
"""

from __future__ import annotations

import datetime
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import FUZZ, corpus, tally
from tunnelkeeper.config.load import ConfigError, parse_config
from tunnelkeeper.config.model import Config

EXAMPLE = tomllib.loads((Path(__file__).resolve().parents[2] / "config.example.toml").read_text())
PATH = Path("/etc/tunnelkeeper/config.toml")
TOKEN = corpus("tokens")[0].decode().strip()

# The other token sources, as the example's comments show them.
SOURCES: list[dict[str, Any]] = [
    {"source": "file", "path": "/etc/tunnelkeeper/portal.token", "poll_seconds": 1},
    {"source": "env", "var": "PORTAL_TUNNEL_TOKEN"},
    {"source": "systemd-credential", "name": "portal-token"},
    {"source": "command", "argv": ["op", "read", "op://ops/portal/token"], "timeout_seconds": 30},
    {"source": "vault", "addr": "https://vault.internal:8200", "path": "tk/portal",
     "token_file": "/etc/tunnelkeeper/vault.token"},
    {"source": "aws-secrets-manager", "secret_id": "prod/tunnels/portal", "region": "eu-central-1"},
    EXAMPLE["tunnel"][1]["token"],
]  # fmt: skip

wrong_values = st.one_of(
    st.none(),  # dropped when rendered: a missing key
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, -1, 26, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "relative/path", "http://", "127.0.0.1", "[::1]:99", "0 4 * * 1"]),
    st.just(TOKEN),
    st.datetimes(timezones=st.none() | st.just(datetime.UTC)),
    st.dates(),
    st.times(),
    st.lists(st.integers(0, 3) | st.text(max_size=5), max_size=3),
    st.dictionaries(st.sampled_from(["x", "source", "path"]), st.text(max_size=5), max_size=2),
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """The example config with some values swapped for wrong ones (or the token)."""

    def vary(node: Any, depth: int = 0) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if draw(st.integers(0, 9)) == 0:
                    continue  # a key left out
                out[key] = vary(value, depth + 1)
            if draw(st.integers(0, 14)) == 0:
                out[draw(st.sampled_from(["extra", "replica", "lisen", "Name", TOKEN]))] = 1
            return out
        if isinstance(node, list) and node and isinstance(node[0], dict):
            return [vary(item, depth + 1) for item in node]
        if draw(st.integers(0, 5)) == 0:
            return draw(wrong_values)
        return node

    doc = dict(EXAMPLE)
    tunnels = [dict(t) for t in doc["tunnel"]]
    for tunnel in tunnels:
        tunnel["token"] = dict(draw(st.sampled_from(SOURCES)))
    doc["tunnel"] = tunnels
    varied: dict[str, Any] = vary(doc)
    return varied


# --- a small TOML writer ----------------------------------------------------------------------


def _key(key: str) -> str:
    bare = key and all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in key)
    return key if bare else _string(key)


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        pairs = [f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(pairs) + " }"
    raise TypeError(type(value))


def render(doc: dict[str, Any], inline_tables: bool) -> str:
    """``[table]`` / ``[[array]]`` headers for top-level tables; nested tables inline or not."""
    lines: list[str] = []

    def table(path: list[str], body: dict[str, Any], header: str) -> None:
        lines.append(header)
        nested = []
        for key, value in body.items():
            if value is None:
                continue
            if isinstance(value, dict) and not inline_tables and key != "token":
                nested.append((key, value))
            else:
                lines.append(f"{_key(key)} = {_value(value)}")
        for key, value in nested:
            sub = [*path, key]
            table(sub, value, "[" + ".".join(_key(p) for p in sub) + "]")
        lines.append("")

    for key, value in doc.items():
        if isinstance(value, dict):
            table([key], value, f"[{_key(key)}]")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                table([key], item, f"[[{_key(key)}]]")
        elif value is not None:
            lines.insert(0, f"{_key(key)} = {_value(value)}")
    return "\n".join(lines) + "\n"


def outcome(text: str) -> Config | ConfigError:
    try:
        return parse_config(text, PATH)
    except ConfigError as exc:
        return exc


def check(text: str) -> Config | ConfigError:
    got = outcome(text)
    if isinstance(got, Config):
        tally("valid")
        return got
    n_lines = len(text.splitlines())
    report = str(got)
    assert len(report.splitlines()) == len(got.problems)
    for problem in got.problems:
        tally(f"problem {problem.key.split('.')[-1][:20]}")
        assert "\n" not in problem.key and "\n" not in problem.message
        assert problem.line is None or 1 <= problem.line <= max(1, n_lines)
        if problem.line is not None and not problem.key.startswith("("):
            # the line shown holds the key or one of its parents (a missing key: its table)
            shown = text.splitlines()[problem.line - 1]
            names = [n.strip('"') for n in re.split(r"[.\[\]]", problem.key) if n]
            elided = any(re.fullmatch(r"<a \d+-character key>", n) for n in names)
            assert elided or any(n in shown for n in names) or shown.startswith("["), (
                problem,
                shown,
            )
    assert TOKEN not in report and TOKEN[10:40] not in report
    return got


@FUZZ
@given(documents(), st.booleans())
def test_documents_from_the_schema(doc: dict[str, Any], inline_tables: bool) -> None:
    check(render(doc, inline_tables))


def test_the_example_renders_to_a_valid_config() -> None:
    assert isinstance(check(render(EXAMPLE, inline_tables=False)), Config)
    assert isinstance(check(render(EXAMPLE, inline_tables=True)), Config)


@pytest.mark.parametrize("key", ["id", "name", "replicas", "token"])
def test_a_token_pasted_as_a_value_is_never_quoted(key: str) -> None:
    doc = {**EXAMPLE, "tunnel": [{**EXAMPLE["tunnel"][0], key: TOKEN}]}
    got = check(render(doc, inline_tables=False))
    assert isinstance(got, ConfigError)


def test_a_token_pasted_as_a_key_is_never_quoted() -> None:
    doc = {**EXAMPLE, "tunnel": [{**EXAMPLE["tunnel"][0], TOKEN: 1}]}
    check(render(doc, inline_tables=False))
