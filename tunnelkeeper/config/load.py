"""Loading the TOML config file into :class:`~tunnelkeeper.config.model.Config`, or every
problem with it.

``load_config(path)`` reads and validates; ``parse_config(text, path)`` does the same from text.
Validation never stops at the first problem: all of them are collected, each naming the key as a
user writes it (``tunnel[1].replicas``) and, where the text shows it, its line, and raised once
as a :class:`ConfigError`. Files the config names (token files, secret files) are not read here.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from tunnelkeeper.config.alerts import read_alerts
from tunnelkeeper.config.fields import Problems, Section
from tunnelkeeper.config.lines import Key, find_line, format_key, key_lines
from tunnelkeeper.config.listen import MAX_CONFIG_BYTES
from tunnelkeeper.config.model import Config
from tunnelkeeper.config.sections import read_cloudflared, read_daemon, read_fleet
from tunnelkeeper.config.tunnels import read_tunnels
from tunnelkeeper.errors import TunnelkeeperError

_TOML_POSITION = re.compile(r"\s*\((?:at line (\d+), column \d+|at end of document)\)\s*$")


class ConfigProblem(NamedTuple):
    key: str
    message: str
    line: int | None

    def render(self, path: Path) -> str:
        where = f"{path}:{self.line}" if self.line is not None else str(path)
        return f"{where}: {self.key}: {self.message}"


class ConfigError(TunnelkeeperError):
    """Everything wrong with one config file; ``str()`` is one line per problem."""

    def __init__(self, path: Path, problems: list[ConfigProblem]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(p.render(path) for p in problems))


def load_config(path: str | Path) -> Config:
    """Read and validate the config file at ``path``; raise :class:`ConfigError` on any problem."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(path, [ConfigProblem("(file)", f"cannot read: {reason}", None)]) from None
    except ValueError:  # e.g. an embedded NUL in the path
        raise ConfigError(path, [ConfigProblem("(file)", "not a valid path", None)]) from None
    if len(data) > MAX_CONFIG_BYTES:
        message = f"larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB; not a config file"
        raise ConfigError(path, [ConfigProblem("(file)", message, None)])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problem = ConfigProblem("(file)", "not UTF-8 text", line)
        raise ConfigError(path, [problem]) from None
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> Config:
    """Validate config ``text`` (as if read from ``path``); raise :class:`ConfigError`."""
    text = text.removeprefix("\ufeff")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [_syntax_problem(str(exc), text)]) from None
    except (ValueError, RecursionError, MemoryError):  # huge integers, absurd nesting
        problem = ConfigProblem("(syntax)", "a value is too large or too deeply nested", None)
        raise ConfigError(path, [problem]) from None
    return build_config(data, path, text=text)


def build_config(data: Mapping[str, object], path: Path, *, text: str = "") -> Config:
    """Validate already-parsed TOML ``data``; ``text`` (if given) supplies line numbers."""
    problems = Problems()
    top = Section(data, (), problems)
    fleet = read_fleet(top)
    config = Config(
        path=path,
        daemon=read_daemon(top),
        cloudflared=read_cloudflared(top),
        tunnels=read_tunnels(top, has_fleet="fleet" in data),
        alerts=read_alerts(top),
        fleet=fleet,
    )
    top.finish()
    if problems.found:
        raise ConfigError(path, _located(problems, text))
    return config


# Longer key names are never quoted in messages: a token pasted as a key (~180 characters)
# must not land in `check` output or the journal.
MAX_KEY_SHOWN = 40


def _shown(key: Key) -> Key:
    return tuple(
        f"<a {len(part)}-character key>"
        if isinstance(part, str) and len(part) > MAX_KEY_SHOWN
        else part
        for part in key
    )


def _located(problems: Problems, text: str) -> list[ConfigProblem]:
    lines = key_lines(text) if text else {}
    located = [
        ConfigProblem(format_key(_shown(key)) or "(top level)", message, find_line(lines, key))
        for key, message in problems.found
    ]
    # file order; problems the text cannot place (e.g. a missing section) last
    return sorted(located, key=lambda p: (p.line is None, p.line or 0))


def _syntax_problem(message: str, text: str) -> ConfigProblem:
    match = _TOML_POSITION.search(message)
    line: int | None = None
    if match is not None:
        message = message[: match.start()]
        line = int(match.group(1)) if match.group(1) else max(1, len(text.splitlines()))
    return ConfigProblem("(syntax)", f"invalid TOML: {message}", line)
