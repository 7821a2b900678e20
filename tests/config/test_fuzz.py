"""Hostile config input: whatever the text or the parsed data, only ConfigError comes out."""

from __future__ import annotations

import datetime
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunnelkeeper.config.lines import key_lines
from tunnelkeeper.config.load import ConfigError, build_config, parse_config
from tunnelkeeper.config.model import Config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
PATH = Path("/etc/tunnelkeeper/config.toml")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# names the validators know, so generated data reaches deep into them
VOCABULARY = [
    "daemon", "cloudflared", "install", "tunnel", "token", "alerts", "overrides", "sink",
    "fleet", "name", "source", "kind", "url", "path", "args", "argv", "env", "headers",
    "replicas", "listen", "host", "id", "var", "addr", "file", "vault", "command", "webhook",
    "slack", "pagerduty", "TunnelDown", "ReplicaDown", "for_seconds", "severity", "enabled",
    "version", "sha256", "account_id", "refresh_schedule", "refresh_timezone",
    "token_file", "role_id_file", "secret_id_file", "url_file", "expected_connectors",
]  # fmt: skip
keys = st.one_of(st.sampled_from(VOCABULARY), st.text(max_size=12))
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["/abs/path", "https://x.example/", "file", "vault", "0 4 * * 1", "UTC"]),
    st.datetimes(),
    st.dates(),
    st.times(),
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)


def check(outcome: Any) -> None:
    """A Config, or a ConfigError whose report is one clean line per problem."""
    assert isinstance(outcome, Config | ConfigError), repr(outcome)
    if isinstance(outcome, ConfigError):
        assert outcome.problems
        assert len(str(outcome).splitlines()) == len(outcome.problems)
        for problem in outcome.problems:
            assert problem.key and "\n" not in problem.key
            assert problem.message and "\n" not in problem.message


def outcome_of(run: Any) -> Config | ConfigError:
    try:
        result: Config = run()
    except ConfigError as exc:
        return exc
    return result


@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_text(text: str) -> None:
    check(outcome_of(lambda: parse_config(text, PATH)))
    key_lines(text)


toml_lines = st.one_of(
    st.sampled_from(
        [
            "[daemon]",
            "[cloudflared]",
            "[cloudflared.install]",
            "[[tunnel]]",
            "[tunnel.token]",
            "[alerts]",
            "[[alerts.sink]]",
            "[alerts.overrides.TunnelDown]",
            "[fleet]",
            "[tunnel]",
            'token = { source = "file", path = "/x" }',
            'token = { source = "vault" }',
            'name = "portal"',
            "replicas = 2",
            'kind = "webhook"',
            'url = "https://h/"',
            'args = [\n"--x",\n',
            "]",
            'x = """',
            '"""',
            "a.b.c = 1",
            '"q k" = 2',
            'listen = "[::1]:9"',
            "headers = { A = 1 }",
            "expected_connectors = 0",
            'refresh_schedule = "* * * * *"',
            "for_seconds = -1",
            "tunnel = []",
            "[[tunnel.token]]",
        ]
    ),
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(VOCABULARY), st.text(max_size=15)),
)


@FUZZ
@given(st.lists(toml_lines, max_size=25))
def test_toml_ish_text(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    check(outcome_of(lambda: parse_config(text, PATH)))


@FUZZ
@given(st.dictionaries(keys, values, max_size=6))
def test_arbitrary_nested_dicts(data: dict[str, Any]) -> None:
    check(outcome_of(lambda: build_config(data, PATH)))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


EXAMPLE_DATA = tomllib.loads(EXAMPLE.read_text())
EXAMPLE_PATHS = _paths(EXAMPLE_DATA)


def _replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy: Any = dict(node) if isinstance(node, dict) else list(node)
    copy[path[0]] = _replace(copy[path[0]], path[1:], value)
    return copy


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(EXAMPLE_PATHS), values), min_size=1, max_size=3))
def test_mutations_of_the_example(mutations: list[tuple[tuple[Any, ...], Any]]) -> None:
    data: Any = EXAMPLE_DATA
    for path, value in mutations:
        try:
            data = _replace(data, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this path
    check(outcome_of(lambda: build_config(data, PATH, text=EXAMPLE.read_text())))


def test_example_data_builds_and_dates_are_described() -> None:
    assert isinstance(build_config(EXAMPLE_DATA, PATH), Config)
    data = _replace(EXAMPLE_DATA, ("tunnel", 0, "replicas"), datetime.date(2026, 1, 1))
    error = outcome_of(lambda: build_config(data, PATH))
    assert isinstance(error, ConfigError)
    assert [p.message for p in error.problems] == ["expected an integer from 1 to 25, got a date"]


def test_odd_characters_never_break_a_problem_onto_two_lines(minimal: str) -> None:
    text = '[daemon]\nlisten = "a\\u2028b\\u0085c\\u001bd"\n' + minimal
    error = outcome_of(lambda: parse_config(text, PATH))
    assert isinstance(error, ConfigError)
    assert len(str(error).splitlines()) == 1
    assert "\\u2028" in str(error)
