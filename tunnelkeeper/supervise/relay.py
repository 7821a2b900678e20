"""From a replica's log blocks to our log: cheap under flood, truthful always.

Real cloudflared with a refused edge writes ~19,000 JSON lines a second, three per connection
attempt, all alike. Decoding each in Python would cost a core; so a block is first counted
with C-speed byte searches against the known flood messages. If every line of the block is one
of them and the flood gate has already let through its few of each kind this window, nothing is
decoded: the lines are counted as skipped, and only the block's last error line is parsed (the
cause a page carries). Any other line (a connection registered or lost, a fatal error) sends the
block down the line-by-line path, where every line is parsed and gated as before.

Backlog (written while no daemon read the file) is summarised: counts and the first line of
each message, instead of being re-emitted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tunnelkeeper.supervise.childlog import (
    ChildLine,
    FloodGate,
    RecentErrors,
    flood_key,
    parse_line,
)
from tunnelkeeper.supervise.logtail import clip

# (level, message) of the lines cloudflared repeats in a tight loop when it cannot reach the
# edge (shared/reference/cloudflared.md); their JSON carries exactly this "message" value.
FLOOD_MESSAGES = (
    ("info", "Tunnel connection curve preferences: [X25519MLKEM768 CurveID(65074) CurveP256]"),
    ("error", "Unable to establish connection with Cloudflare edge"),
    ("error", "Serve tunnel error"),
    ("warning", "observer channel buffer is full"),
)
_NEEDLES = tuple((b'"message":"' + m.encode() + b'"', level, m) for level, m in FLOOD_MESSAGES)
# messages that mean a connection was lost or could not be made: a hint to probe at once
HINT_MESSAGES = (
    "Serve tunnel error",
    "Unable to establish connection with Cloudflare edge",
    "Connection terminated",
    "Unregistered tunnel connection",
    "Retrying connection in up to",
)
_ERROR_MARK = b'"level":"error"'


@dataclass
class Relay:
    """One replica's relay. ``emit(line)`` writes an admitted line to our log,
    ``summarise(kind, count)`` reports a gate window's suppressed count, ``skipped(lines)``
    counts lines not re-emitted, ``hint()`` asks for a probe now."""

    emit: Callable[[ChildLine], None]
    summarise: Callable[[str, int], None]
    skipped: Callable[[int], None]
    hint: Callable[[], None] = lambda: None
    gate: FloodGate = field(default_factory=FloodGate)
    recent_errors: RecentErrors = field(default_factory=RecentErrors)
    bind_failed: bool = False
    backlog_counts: dict[str, int] = field(default_factory=dict)
    backlog_first: dict[str, str] = field(default_factory=dict)

    @property
    def cause(self) -> str | None:
        """The last distinct error cloudflared logged (sanitised, bounded), if any."""
        return self.recent_errors.lines[-1] if self.recent_errors.lines else None

    def block(self, data: bytes, backlog: bool = False) -> None:
        lines = data.count(b"\n")
        if not lines:
            return
        if backlog:
            self._backlog(data)
            return
        counts = [data.count(needle) for needle, _, _ in _NEEDLES]
        if sum(counts) == lines and self._saturated(counts):
            self._flood(data, counts)
            return
        for raw in data.split(b"\n"):
            self._line(raw)

    def _saturated(self, counts: list[int]) -> bool:
        """Whether the gate would drop every line of these kinds now."""
        now = time.monotonic()
        return all(
            n == 0 or not self.gate.would_admit(f"{level}:{message[:120]}", now)
            for n, (_, level, message) in zip(counts, _NEEDLES, strict=True)
        )

    def _flood(self, data: bytes, counts: list[int]) -> None:
        now = time.monotonic()
        for n, (_, level, message) in zip(counts, _NEEDLES, strict=True):
            if n:
                for key, count in self.gate.suppress(f"{level}:{message[:120]}", n, now).items():
                    self.summarise(key, count)
        self.skipped(sum(counts))
        self.hint()
        last = data.rfind(_ERROR_MARK)
        if last >= 0:  # the cause: parse just that one line
            start = data.rfind(b"\n", 0, last) + 1
            end = data.find(b"\n", last)
            line = parse_line(data[start:end])
            if line is not None:
                self.recent_errors.add(line)

    def _line(self, raw: bytes) -> None:
        line = parse_line(clip(raw))
        if line is None:
            return
        self.recent_errors.add(line)
        if "bind: address already in use" in line.message:
            self.bind_failed = True
        if line.message.startswith(HINT_MESSAGES):
            self.hint()
        admitted, summaries = self.gate.admit(flood_key(line), time.monotonic())
        for key, count in summaries.items():
            self.summarise(key, count)
        if admitted:
            self.emit(line)
        else:
            self.skipped(1)

    def _backlog(self, data: bytes) -> None:
        counts = [data.count(needle) for needle, _, _ in _NEEDLES]
        if sum(counts) == data.count(b"\n"):  # a pure flood: counted, not decoded
            for n, (_, level, message) in zip(counts, _NEEDLES, strict=True):
                if n:
                    key = f"{level}:{message[:120]}"
                    self.backlog_counts[key] = self.backlog_counts.get(key, 0) + n
                    self.backlog_first.setdefault(key, message)
            self.skipped(sum(counts))
            return
        for raw in data.split(b"\n"):
            line = parse_line(raw)
            if line is None:
                continue
            self.recent_errors.add(line)
            key = flood_key(line)
            self.backlog_counts[key] = self.backlog_counts.get(key, 0) + 1
            if key not in self.backlog_first and len(self.backlog_first) < 32:
                self.backlog_first[key] = line.message
            self.skipped(1)

    def take_backlog(self) -> tuple[dict[str, int], dict[str, str]]:
        """The summary of lines written while no daemon read (and forget it)."""
        counts, first = self.backlog_counts, self.backlog_first
        self.backlog_counts, self.backlog_first = {}, {}
        return counts, first
