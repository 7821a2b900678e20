"""Reading one TOML table into typed values, recording every problem instead of stopping.

A :class:`Section` wraps a parsed table and its key path. Each getter takes the key name and the
dataclass default, returns a value of the right type (the default when the key is absent or
wrong) and records a problem naming the full key, what was expected and what was got. Getters
also register the name as known, so :meth:`Section.finish` can report every other key as
unknown, with a did-you-mean suggestion.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from tunnelkeeper.config.lines import Key
from tunnelkeeper.config.wording import describe, range_text, suggestion


class Problems:
    """Everything wrong with one config, in the order it was found."""

    def __init__(self) -> None:
        self.found: list[tuple[Key, str]] = []

    def add(self, key: Key, message: str) -> None:
        self.found.append((key, message))


def url_problem(value: str, schemes: tuple[str, ...] = ("http", "https")) -> str | None:
    """Why ``value`` is not an absolute URL with one of ``schemes`` and a host, or None."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return "malformed"
    if parts.scheme.lower() not in schemes:
        return "wrong scheme"
    if not parts.hostname:
        return "no host"
    if any(c.isspace() for c in value):
        return "contains whitespace"
    return None


class Section:
    """One TOML table at ``key``; see the module docstring."""

    def __init__(
        self, data: Mapping[str, object], key: Key, problems: Problems, context: str = ""
    ) -> None:
        self.data = data
        self.key = key
        self.problems = problems
        self.context = context  # e.g. ' for source "file"', appended to unknown-key messages
        self.known: set[str] = set()

    # --- plumbing ---------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        self.known.add(name)
        return name in self.data

    def raw(self, name: str) -> object | None:
        self.known.add(name)
        return self.data.get(name)

    def problem(self, name: str | int | None, message: str) -> None:
        self.problems.add(self.key if name is None else (*self.key, name), message)

    def expected(self, name: str | int, what: str, value: object, *, secret: bool = False) -> None:
        self.problem(name, f"expected {what}, got {describe(value, secret=secret)}")

    def missing(self, name: str, what: str) -> None:
        self.problem(name, f"required key missing (expected {what})")

    def finish(self, elsewhere: Mapping[str, str] | None = None) -> None:
        """Report every key no getter asked for; ``elsewhere`` explains keys valid elsewhere."""
        known = sorted(self.known)
        for name in self.data:
            if name in self.known:
                continue
            label = name if isinstance(name, str) else str(name)
            if elsewhere and label in elsewhere:
                self.problem(label, elsewhere[label])
            else:
                self.problem(label, f"unknown key{self.context}{suggestion(label, known)}")

    # --- sub-tables -------------------------------------------------------------------------

    def table(self, name: str, context: str = "") -> Section | None:
        value = self.raw(name)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.expected(name, "a table", value)
            return None
        return Section(value, (*self.key, name), self.problems, context)

    def tables(self, name: str, header: str) -> list[Section]:
        """An array of tables (``[[header]]``)."""
        value = self.raw(name)
        if value is None:
            return []
        if not isinstance(value, list):
            self.expected(name, f"an array of tables ([[{header}]])", value)
            return []
        out = []
        for index, item in enumerate(value):
            if isinstance(item, Mapping):
                out.append(Section(item, (*self.key, name, index), self.problems))
            else:
                self.problems.add(
                    (*self.key, name, index), f"expected a table, got {describe(item)}"
                )
        return out

    # --- scalars ----------------------------------------------------------------------------

    def text(self, name: str, default: str, *, required: bool = False, secret: bool = False) -> str:
        """A non-empty string."""
        value = self.raw(name)
        if value is None:
            if required:
                self.missing(name, "a non-empty string")
            return default
        if not isinstance(value, str) or not value.strip():
            self.expected(name, "a non-empty string", value, secret=secret)
            return default
        if "\x00" in value:
            self.problem(name, "must not contain a NUL character")
            return default
        return value

    def optional_text(self, name: str) -> str | None:
        return (self.text(name, "") or None) if self.has(name) else None

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, str) and value in choices:
            return value
        listed = ", ".join(f'"{c}"' for c in choices)
        hint = suggestion(value, list(choices)) if isinstance(value, str) else ""
        self.problem(name, f"expected one of {listed}, got {describe(value)}{hint}")
        return default

    def number(
        self,
        name: str,
        default: float,
        *,
        gt: float | None = None,
        ge: float | None = None,
        le: float | None = None,
    ) -> float:
        """A finite number (TOML integers accepted, booleans never) within the bounds."""
        value = self.raw(name)
        if value is None:
            return default
        what = range_text(integer=False, gt=gt, ge=ge, le=le)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.expected(name, what, value)
            return default
        if isinstance(value, int) and abs(value) > 2**53:
            self.expected(name, what, value)
            return default
        number = float(value)
        if not _within(number, gt, ge, le):
            self.expected(name, what, value)
            return default
        return number

    def integer(
        self, name: str, default: int, *, ge: int | None = None, le: int | None = None
    ) -> int:
        value = self.raw(name)
        if value is None:
            return default
        what = range_text(integer=True, gt=None, ge=ge, le=le)
        if isinstance(value, bool) or not isinstance(value, int):
            self.expected(name, what, value)
            return default
        if not _within(value, None, ge, le):
            self.expected(name, what, value)
            return default
        return value

    def optional_integer(
        self, name: str, *, ge: int | None = None, le: int | None = None
    ) -> int | None:
        if not self.has(name):
            return None
        return self.integer(name, ge if ge is not None else 0, ge=ge, le=le)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.expected(name, "true or false", value)
            return default
        return value

    def path(self, name: str, default: Path, *, required: bool = False) -> Path:
        """An absolute filesystem path."""
        value = self.raw(name)
        if value is None:
            if required:
                self.missing(name, "an absolute path")
            return default
        if not isinstance(value, str) or not PurePosixPath(value).is_absolute():
            self.expected(name, "an absolute path", value)
            return default
        if "\x00" in value:
            self.problem(name, "must not contain a NUL character")
            return default
        return Path(value)

    def optional_path(self, name: str) -> Path | None:
        return self.path(name, Path()) if self.has(name) else None

    def url(self, name: str, default: str, *, required: bool = False, secret: bool = False) -> str:
        """An http(s) URL with a host. ``secret`` URLs are never shown in messages."""
        value = self.raw(name)
        if value is None:
            if required:
                self.missing(name, "an http(s) URL")
            return default
        if not isinstance(value, str) or url_problem(value) is not None:
            self.expected(name, "an http(s) URL", value, secret=secret)
            return default
        return value

    def optional_url(self, name: str, *, secret: bool = False) -> str | None:
        return (self.url(name, "", secret=secret) or None) if self.has(name) else None

    def strings(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """An array of non-empty strings; each bad element is its own problem."""
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, list):
            self.expected(name, "an array of strings", value)
            return default
        good = True
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item or "\x00" in item:
                message = f"expected a non-empty string, got {describe(item)}"
                self.problems.add((*self.key, name, index), message)
                good = False
        return tuple(value) if good else default

    def string_table(
        self, name: str, key_pattern: re.Pattern[str], key_what: str
    ) -> dict[str, str]:
        """A table of string values; values may be secrets, so they are never shown."""
        section = self.table(name)
        if section is None:
            return {}
        out: dict[str, str] = {}
        for key, value in section.data.items():
            label = key if isinstance(key, str) else str(key)
            section.known.add(label)
            if not key_pattern.fullmatch(label):
                section.problem(label, f"not a valid {key_what} name")
            elif not isinstance(value, str) or "\x00" in value or "\n" in value or "\r" in value:
                section.expected(label, "a single-line string", value, secret=True)
            else:
                out[label] = value
        return out


def _within(value: float, gt: float | None, ge: float | None, le: float | None) -> bool:
    if not math.isfinite(value):
        return False
    if gt is not None and not value > gt:
        return False
    if ge is not None and not value >= ge:
        return False
    return not (le is not None and not value <= le)
