"""load_config / parse_config as `tunnelkeeper check` uses them: files, syntax, reporting."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.config.conftest import ProblemsOf
from tunnelkeeper.config.load import ConfigError, ConfigProblem, load_config, parse_config
from tunnelkeeper.config.model import FileSourceConfig
from tunnelkeeper.errors import TunnelkeeperError
from tunnelkeeper.tunneltoken import TunnelToken

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path, minimal: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(minimal)
    config = load_config(path)
    assert config.path == path
    assert config.daemon.host  # the hostname
    assert config.daemon.listen == "127.0.0.1:9105"
    assert config.cloudflared.path == Path("/usr/local/bin/cloudflared")
    assert config.cloudflared.install is None
    assert config.fleet is None
    assert config.alerts.sinks == ()
    (tunnel,) = config.tunnels
    assert tunnel.name == "portal"
    assert tunnel.replicas == 2
    assert tunnel.token == FileSourceConfig(path=Path("/etc/tunnelkeeper/portal.token"))


def test_example_config_is_valid_and_uses_every_section() -> None:
    config = load_config(EXAMPLE)
    assert config.cloudflared.install is not None
    assert config.fleet is not None
    assert {t.name for t in config.tunnels} == {"portal", "admin"}
    assert {s.kind for s in config.alerts.sinks} == {
        "webhook",
        "slack",
        "pagerduty",
        "alertmanager",
    }
    assert config.alerts.overrides


def test_example_configs_commented_token_sources_are_valid(minimal: str) -> None:
    """The alternative sources shown as comments must work when a user uncomments one."""
    lines = [
        line.lstrip("# ").strip()
        for line in EXAMPLE.read_text().splitlines()
        if re.match(r"#\s+token = \{", line)
    ]
    assert len(lines) >= 5
    for line in lines:
        text = f'[[tunnel]]\nname = "x"\n{line}\n'
        config = parse_config(text, Path("c.toml"))
        assert config.tunnels[0].token.kind in line


def test_missing_file_is_one_clean_problem(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.path == path
    assert caught.value.problems == [
        ConfigProblem("(file)", "cannot read: No such file or directory", None)
    ]
    assert str(caught.value) == f"{path}: (file): cannot read: No such file or directory"
    assert isinstance(caught.value, TunnelkeeperError)


def test_directory_and_non_utf8_files_are_clean_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.problems[0].key == "(file)"
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[daemon]\nhost = "caf\xe9"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [ConfigProblem("(file)", "not UTF-8 text", 2)]


def test_syntax_error_reports_tomls_line(problems_of: ProblemsOf) -> None:
    (problem,) = problems_of('[daemon]\nlisten = "127.0.0.1:1"\nhost = \n')
    assert problem.key == "(syntax)"
    assert problem.line == 3
    assert problem.message.startswith("invalid TOML: ")
    assert "line" not in problem.message


def test_syntax_error_at_end_of_document_names_the_last_line(problems_of: ProblemsOf) -> None:
    (problem,) = problems_of('[daemon]\nhost = "x"\nlisten = "unterminated')
    assert problem.key == "(syntax)"
    assert problem.line is not None and problem.line >= 1


def test_absurd_values_are_clean_problems(problems_of: ProblemsOf) -> None:
    assert problems_of("x = " + "9" * 5000)[0].key == "(syntax)"
    assert problems_of("x = " + "[" * 5000 + "]" * 5000)[0].key == "(syntax)"


def test_all_problems_are_reported_at_once_in_file_order(problems_of: ProblemsOf) -> None:
    text = """\
[daemon]
listen = "nowhere"
log_level = "loud"

[[tunnel]]
name = "portal"
replicas = 0
token = { source = "file", path = "relative.token" }
"""
    problems = problems_of(text)
    assert [(p.key, p.line) for p in problems] == [
        ("daemon.listen", 2),
        ("daemon.log_level", 3),
        ("tunnel[0].replicas", 7),
        ("tunnel[0].token.path", 8),
    ]


def test_error_text_is_one_line_per_problem(minimal: str) -> None:
    text = minimal + "replicas = 99\n[daemon]\nlisten = 5\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Path("/etc/tk.toml"))
    assert str(caught.value).splitlines() == [
        "/etc/tk.toml:4: tunnel[0].replicas: expected an integer from 1 to 25, got 99",
        "/etc/tk.toml:6: daemon.listen: expected a non-empty string, got 5",
    ]


def test_unknown_top_level_keys_and_sections(
    messages_of: Callable[[str], dict[str, str]], minimal: str
) -> None:
    messages = messages_of(minimal + '[deamon]\nhost = "x"\n')
    assert messages == {"deamon": 'unknown key (did you mean "daemon"?)'}
    messages = messages_of("tunnels = []\n")
    assert messages["tunnels"] == 'unknown key (did you mean "tunnel"?)'
    assert messages["tunnel"] == "expected at least one [[tunnel]] table, got none"


def test_a_section_of_the_wrong_type(
    messages_of: Callable[[str], dict[str, str]], minimal: str
) -> None:
    messages = messages_of('daemon = "yes"\n' + minimal)
    assert messages == {"daemon": 'expected a table, got "yes"'}


def test_a_token_pasted_into_a_path_is_never_echoed(problems_of: ProblemsOf) -> None:
    token = TunnelToken.build(
        "699d98642c564d2e855e9661899b7252", "c1744f8b-faa1-48a4-9e5c-02ac921467fa", b"s" * 32
    ).reveal()
    text = f'[[tunnel]]\nname = "portal"\ntoken = {{ source = "file", path = "{token}" }}\n'
    problems = problems_of(text)
    assert [p.key for p in problems] == ["tunnel[0].token.path"]
    assert token[:20] not in str(problems)
    assert "a tunnel token (not shown)" in problems[0].message
    text = f'[[tunnel]]\nname = "portal"\ntoken = "{token}"\n'
    problems = problems_of(text)
    assert [p.key for p in problems] == ["tunnel[0].token"]
    assert token[:20] not in str(problems)
