"""How problem messages word things: a value as got, a range as expected, a suggestion.

Values are shown the way a user wrote them in TOML (``"two"``, ``0``, ``true``, ``an array``),
except secrets, which are only ever named by type, and anything that parses as a tunnel token.
"""

from __future__ import annotations

import datetime
import difflib
import json
from collections.abc import Mapping

from tunnelkeeper.errors import TunnelkeeperError
from tunnelkeeper.tunneltoken import TunnelToken

_SHOWN_CHARS = 60


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped, so a problem stays on one line."""
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def describe(value: object, *, secret: bool = False) -> str:
    """A value as a problem message shows it; secrets (and token-like text) only by type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if secret:
            return "a string" if value else '""'
        if _looks_like_token(value):
            return "a tunnel token (not shown)"
        shown = value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "…"
        return printable(json.dumps(shown, ensure_ascii=False))
    if isinstance(value, int) and value.bit_length() > 100:
        return "a very large integer"
    if isinstance(value, int | float):
        return "a number" if secret else repr(value)
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, datetime.datetime):
        return "a date-time"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, datetime.time):
        return "a time"
    return type(value).__name__


def _looks_like_token(text: str) -> bool:
    if len(text) < 40:
        return False
    try:
        TunnelToken.parse(text)
    except TunnelkeeperError:
        return False
    return True


def suggestion(name: str, known: list[str]) -> str:
    """`` (did you mean "x"?)`` for the closest known name, or nothing."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _bound(x: float) -> str:
    return f"{x:g}"


def range_text(*, integer: bool, gt: float | None, ge: float | None, le: float | None) -> str:
    noun = "an integer" if integer else "a number"
    if ge is not None and le is not None:
        return f"{noun} from {_bound(ge)} to {_bound(le)}"
    low = f" > {_bound(gt)}" if gt is not None else f" >= {_bound(ge)}" if ge is not None else ""
    high = f" <= {_bound(le)}" if le is not None else ""
    return noun + low + (" and" if low and high else "") + high
