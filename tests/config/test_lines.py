"""Problems point at the line a user has to edit."""

from __future__ import annotations

from tests.config.conftest import ProblemsOf
from tunnelkeeper.config.lines import find_line, format_key, key_lines


def lines_of(problems_of: ProblemsOf, text: str) -> dict[str, int | None]:
    return {p.key: p.line for p in problems_of(text)}


def test_headers_keys_and_array_indexes(problems_of: ProblemsOf) -> None:
    text = """\
# comment = 1
[daemon]
listen = "x"

[[tunnel]]
name = "a"
token = { source = "file", path = "/a" }

[[tunnel]]
name = "b"
replicas = "two"
token = { source = "file", path = "relative" }

[[alerts.sink]]
kind = "webhook"
url = "https://x/"

[[alerts.sink]]
kind = "webhook"
timeout_seconds = 0
"""
    assert lines_of(problems_of, text) == {
        "daemon.listen": 3,
        "tunnel[1].replicas": 11,
        "tunnel[1].token.path": 12,  # inside an inline table: the line of `token =`
        "alerts.sink[1].url": 18,  # missing: the sink's header
        "alerts.sink[1].timeout_seconds": 20,
    }


def test_dotted_keys_subtables_and_override_sections(problems_of: ProblemsOf) -> None:
    text = """\
[[tunnel]]
name = "a"
[tunnel.token]
source = "env"
var = "1x"

[alerts]
overrides.TunnelDown.severity = "loud"

[alerts.overrides.ReplicaDown]
for_seconds = -1
"""
    assert lines_of(problems_of, text) == {
        "tunnel[0].token.var": 5,
        "alerts.overrides.TunnelDown.severity": 8,
        "alerts.overrides.ReplicaDown.for_seconds": 11,
    }


def test_multiline_values_do_not_confuse_the_scan(problems_of: ProblemsOf) -> None:
    text = '''\
[cloudflared]
args = [
  "--protocol",
  "run",
]
path = """
replicas = 3
"""

[[tunnel]]
name = "a"
token = { source = "file", path = "/a" }
replica = 2
'''
    assert lines_of(problems_of, text) == {
        "cloudflared.args[1]": 2,
        "cloudflared.path": 6,
        "tunnel[0].replica": 13,
    }


def test_quoted_keys_are_found_and_shown_quoted(problems_of: ProblemsOf) -> None:
    text = '[[tunnel]]\nname = "a"\ntoken = { source = "file", path = "/a" }\n"odd key" = 1\n'
    assert lines_of(problems_of, text) == {'tunnel[0]."odd key"': 4}


def test_locator_directly() -> None:
    lines = key_lines("[a]\nb.c = 1\n[[d]]\n[[d]]\n'e f' = { g = 1 }\n")
    assert find_line(lines, ("a", "b", "c")) == 2
    assert find_line(lines, ("d", 1, "e f", "g")) == 5
    assert find_line(lines, ("d", 0, "nothing")) == 3
    assert find_line(lines, ("zzz",)) is None
    assert format_key(("d", 1, "e f", "g")) == 'd[1]."e f".g'
    assert format_key(("x", "a\nb")) == 'x."a\\nb"'
