"""Where a config key sits in the TOML text, for problems that name a line.

tomllib keeps no positions, so this scans the text on its own terms: table headers
(``[daemon]``, ``[[tunnel]]`` counted per parent for the index, ``[tunnel.token]`` under the
latest ``[[tunnel]]``), ``key =`` and dotted ``a.b =`` lines, skipping the insides of multi-line
strings and arrays. An inline table is found at the line of its ``key =``. Best effort: a key the
scan does not know resolves to its nearest known parent, or to ``None``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

Key = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def format_key(key: Key) -> str:
    """A key path as a user writes it: ``tunnel[1].token.path``, quoting unusual names."""
    out = ""
    for part in key:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = part if _BARE.fullmatch(part) else json.dumps(part)
        out += f".{text}" if out else text
    return out


def find_line(lines: Mapping[Key, int], key: Key) -> int | None:
    """The line of ``key``, else of its nearest parent the scan saw, else ``None``."""
    while key:
        line = lines.get(key)
        if line is not None:
            return line
        key = key[:-1]
    return None


def key_lines(text: str) -> dict[Key, int]:
    """Map each key path the text visibly defines to its 1-based line (first definition)."""
    found: dict[Key, int] = {}
    arrays: dict[Key, int] = {}  # array-of-tables path -> number of [[...]] seen so far
    table: Key = ()
    depth = 0
    multiline: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if multiline is not None or depth > 0:
            depth, multiline = _scan_value(line, 0, depth, multiline)
            continue
        stripped = line.lstrip()
        start = len(line) - len(stripped)
        if stripped.startswith("[["):
            parsed = _parse_key(line, start + 2)
            if parsed is None or not parsed[0]:
                continue
            parent = _resolve(tuple(parsed[0][:-1]), arrays)
            array = (*parent, parsed[0][-1])
            index = arrays.get(array, 0)
            arrays[array] = index + 1
            table = (*array, index)
            _record(found, table, number)
        elif stripped.startswith("["):
            parsed = _parse_key(line, start + 1)
            if parsed is None or not parsed[0]:
                continue
            table = _resolve(tuple(parsed[0]), arrays)
            _record(found, table, number)
        elif stripped and not stripped.startswith("#"):
            parsed = _parse_key(line, start)
            if parsed is None:
                continue
            parts, end = parsed
            rest = line[end:].lstrip()
            if not parts or not rest.startswith("="):
                continue
            _record(found, (*table, *parts), number)
            depth, multiline = _scan_value(line, line.index("=", end) + 1, 0, None)
    return found


def _record(found: dict[Key, int], key: Key, number: int) -> None:
    for size in range(1, len(key) + 1):
        found.setdefault(key[:size], number)


def _resolve(parts: Key, arrays: Mapping[Key, int]) -> Key:
    """Header parts to a path, stepping into the latest element of each array of tables."""
    path: Key = ()
    for part in parts:
        path = (*path, part)
        count = arrays.get(path)
        if count:
            path = (*path, count - 1)
    return path


def _parse_key(line: str, pos: int) -> tuple[list[str | int], int] | None:
    """Parse a (dotted) TOML key starting at ``pos``; return its parts and the end position."""
    parts: list[str | int] = []
    while True:
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if pos >= len(line):
            return None
        char = line[pos]
        if char == '"':
            end = _string_end(line, pos + 1, '"')
            if end < 0:
                return None
            raw = line[pos : end + 1]
            try:
                decoded = json.loads(raw)
            except ValueError:
                decoded = raw[1:-1]
            parts.append(str(decoded))
            pos = end + 1
        elif char == "'":
            end = line.find("'", pos + 1)
            if end < 0:
                return None
            parts.append(line[pos + 1 : end])
            pos = end + 1
        else:
            match = _BARE.match(line, pos)
            if match is None:
                return None
            parts.append(match.group())
            pos = match.end()
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if pos < len(line) and line[pos] == ".":
            pos += 1
            continue
        return parts, pos


def _string_end(line: str, pos: int, quote: str) -> int:
    """Index of the closing quote of a single-line string whose body starts at ``pos``."""
    while pos < len(line):
        char = line[pos]
        if char == "\\" and quote == '"':
            pos += 2
            continue
        if char == quote:
            return pos
        pos += 1
    return -1


def _scan_value(line: str, pos: int, depth: int, multiline: str | None) -> tuple[int, str | None]:
    """Follow brackets and strings through ``line``; return the open depth and string state."""
    while pos < len(line):
        if multiline is not None:
            end = line.find(multiline, pos)
            if end < 0:
                return depth, multiline
            while line.startswith(multiline[0], end + 3):  # quotes just before the closer
                end += 1
            pos, multiline = end + 3, None
            continue
        char = line[pos]
        if char == "#":
            break
        if char in "\"'":
            if line.startswith(char * 3, pos):
                multiline = char * 3
                pos += 3
                continue
            end = _string_end(line, pos + 1, char)
            if end < 0:
                break
            pos = end + 1
            continue
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(0, depth - 1)
        pos += 1
    return depth, multiline
