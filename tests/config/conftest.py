"""Fixtures for config tests: a minimal valid config and a way to see a text's problems."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tunnelkeeper.config.load import ConfigError, ConfigProblem, parse_config

MINIMAL = """\
[[tunnel]]
name = "portal"
token = { source = "file", path = "/etc/tunnelkeeper/portal.token" }
"""

ProblemsOf = Callable[[str], list[ConfigProblem]]


@pytest.fixture
def minimal() -> str:
    return MINIMAL


@pytest.fixture
def problems_of() -> ProblemsOf:
    """The problems parse_config reports for a text; fails the test if there are none."""

    def run(text: str) -> list[ConfigProblem]:
        with pytest.raises(ConfigError) as caught:
            parse_config(text, Path("/etc/tunnelkeeper/config.toml"))
        assert caught.value.problems, "ConfigError without problems"
        return caught.value.problems

    return run


@pytest.fixture
def messages_of(problems_of: ProblemsOf) -> Callable[[str], dict[str, str]]:
    """key -> message (the last one per key) for a text's problems."""

    def run(text: str) -> dict[str, str]:
        return {p.key: p.message for p in problems_of(text)}

    return run
