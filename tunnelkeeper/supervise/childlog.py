"""cloudflared's log lines: parse them (hostile input) and keep floods out of our own output.

Real cloudflared with an unreachable edge writes ~680,000 identical "Serve tunnel error" lines
in two minutes. We re-emit the first few of each message per window and then one summary line
("suppressed K similar lines"), and keep the last error lines for ``tunnelkeeper status``.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MAX_FIELD_CHARS = 512
MAX_FIELDS = 16
LEVELS = {
    "debug": "debug",
    "info": "info",
    "warn": "warning",
    "error": "error",
    "fatal": "critical",
}
# Keys cloudflared puts in its JSON lines that are worth carrying over, and the names they get
# in our log lines (never "event", "level" or "timestamp": those are our own).
_KNOWN_EXTRAS = {
    "connIndex": "conn_index",
    "error": "error",
    "ip": "edge_ip",
    "location": "location",
    "connection": "connection",
    "protocol": "protocol",
    "tunnelID": "tunnel_id",
}


@dataclass(frozen=True)
class ChildLine:
    level: str  # structlog method name: debug/info/warning/error/critical
    message: str
    fields: dict[str, Any]


def _clip(value: str) -> str:
    return value if len(value) <= MAX_FIELD_CHARS else value[:MAX_FIELD_CHARS] + "…"


def _printable(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    return "".join(ch if ch.isprintable() or ch == "\t" else "?" for ch in text)


def _printable_str(value: str) -> str:
    # JSON may carry lone surrogates ("\ud800"): not encodable, replaced like any junk
    return _printable(value.encode("utf-8", errors="replace"))


def parse_line(raw: bytes) -> ChildLine | None:
    """One line of cloudflared stderr → ChildLine. Never raises; blank lines give None."""
    stripped = raw.strip()
    if not stripped:
        return None
    obj: Any = None
    if stripped.startswith(b"{"):
        try:
            obj = json.loads(stripped)
        except (ValueError, UnicodeDecodeError, RecursionError):
            obj = None
    if not isinstance(obj, dict):
        return ChildLine("info", _clip(_printable(stripped)), {"unparsed": True})
    level = LEVELS.get(str(obj.get("level", "info")).lower(), "info")
    message = obj.get("message")
    message = _clip(_printable_str(message)) if isinstance(message, str) else "(no message)"
    fields: dict[str, Any] = {}
    for key, ours in _KNOWN_EXTRAS.items():
        if key in obj and len(fields) < MAX_FIELDS:
            value = obj[key]
            if isinstance(value, bool | int | float):
                fields[ours] = value
            elif isinstance(value, str):
                fields[ours] = _clip(_printable_str(value))
    return ChildLine(level, message, fields)


def flood_key(line: ChildLine) -> str:
    """Lines that differ only in connection index, ip or timing count as "similar"."""
    return f"{line.level}:{line.message[:120]}"


@dataclass
class FloodGate:
    """Per-replica rate limiter: at most ``burst`` lines of each kind per window, then a summary."""

    window_seconds: float = 60.0
    burst: int = 5
    max_kinds: int = 256
    _window_start: float = 0.0
    _counts: dict[str, int] = field(default_factory=dict)
    _suppressed: dict[str, int] = field(default_factory=dict)

    def admit(self, key: str, now: float) -> tuple[bool, dict[str, int]]:
        """Whether to emit this line, plus summaries {key: suppressed count} of a closed window."""
        summaries = self._roll(now)
        seen = self._counts.get(key, 0)
        if seen < self.burst and (key in self._counts or len(self._counts) < self.max_kinds):
            self._counts[key] = seen + 1
            return True, summaries
        self._suppressed[key] = self._suppressed.get(key, 0) + 1
        return False, summaries

    def _roll(self, now: float) -> dict[str, int]:
        summaries: dict[str, int] = {}
        if now - self._window_start >= self.window_seconds:
            summaries = {k: v for k, v in self._suppressed.items() if v}
            self._window_start = now
            self._counts.clear()
            self._suppressed.clear()
        return summaries

    def remaining(self, key: str, now: float) -> int:
        """How many more lines of ``key`` the gate would let through now."""
        if now - self._window_start >= self.window_seconds:
            return self.burst
        if key not in self._counts and len(self._counts) >= self.max_kinds:
            return 0
        return max(0, self.burst - self._counts.get(key, 0))

    def suppress(self, key: str, n: int, now: float) -> dict[str, int]:
        """Count ``n`` lines of ``key`` as dropped (the caller checked :meth:`remaining`)."""
        summaries = self._roll(now)
        self._suppressed[key] = self._suppressed.get(key, 0) + n
        return summaries

    def flush(self) -> dict[str, int]:
        summaries = {k: v for k, v in self._suppressed.items() if v}
        self._suppressed.clear()
        return summaries


@dataclass
class RecentErrors:
    """The last few warning-or-worse (or plain-text) messages of a replica, for status after
    it exits."""

    size: int = 5
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    # the last line that carried an error value (cloudflared's "error" field): the cause a
    # page shows, rather than the last line of a help text logged at error level
    cause: str | None = None

    def add(self, line: ChildLine) -> None:
        # Plain-text lines are how cloudflared reports fatal start errors (bad token, port taken).
        if line.level in ("warning", "error", "critical") or line.fields.get("unparsed"):
            err = line.fields.get("error")
            text = f"{line.message}: {err}" if isinstance(err, str) and err else line.message
            if not self.lines or self.lines[-1] != text:
                self.lines.append(text)
            if isinstance(err, str) and err:
                self.cause = text
