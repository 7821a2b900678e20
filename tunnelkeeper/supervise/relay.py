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
_KEYS = tuple((needle, f"{level}:{message[:120]}") for needle, level, message in _NEEDLES)
# messages that mean a connection was lost or could not be made: a hint to probe at once
HINT_MESSAGES = (
    "Serve tunnel error",
    "Unable to establish connection with Cloudflare edge",
    "Connection terminated",
    "Unregistered tunnel connection",
    "Retrying connection in up to",
)
# a connection was made: a replica not yet known to be connected is probed at once, so that
# one starting (or recovering) is known ready when it is, not at its next probe
REGISTERED_MESSAGE = "Registered tunnel connection"
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
    registered: Callable[[], None] = lambda: None
    gate: FloodGate = field(default_factory=FloodGate)
    recent_errors: RecentErrors = field(default_factory=RecentErrors)
    bind_failed: bool = False
    backlog_counts: dict[str, int] = field(default_factory=dict)
    backlog_first: dict[str, str] = field(default_factory=dict)

    @property
    def cause(self) -> str | None:
        """The last distinct error cloudflared logged (sanitised, bounded), if any."""
        errors = self.recent_errors
        return errors.cause or (errors.lines[-1] if errors.lines else None)

    def block(self, data: bytes, backlog: bool = False) -> None:
        lines = data.count(b"\n")
        if not lines:
            return
        if backlog:
            self._backlog(data)
            return
        counts, left = [], lines
        for needle, _, _ in _NEEDLES:  # most frequent first; stop once every line is known
            n = data.count(needle) if left else 0
            counts.append(n)
            left -= n
        if left:  # something else in there: line by line, flood lines still not decoded
            self._mixed(data)
            return
        # a pure flood: only the lines the gate still lets through are found and decoded
        now = time.monotonic()
        for n, (needle, level, message) in zip(counts, _NEEDLES, strict=True):
            if not n:
                continue
            key = f"{level}:{message[:120]}"
            let_through = min(n, self.gate.remaining(key, now))
            pos = 0
            for _ in range(let_through):
                at = data.find(needle, pos)
                start, pos = data.rfind(b"\n", 0, at) + 1, data.find(b"\n", at)
                self._line(data[start:pos])
            if n > let_through:
                for kind, count in self.gate.suppress(key, n - let_through, now).items():
                    self.summarise(kind, count)
                self.skipped(n - let_through)
        self.hint()
        last = data.rfind(_ERROR_MARK)
        if last >= 0:  # the cause: parse just that one line
            start = data.rfind(b"\n", 0, last) + 1
            line = parse_line(data[start : data.find(b"\n", last)])
            if line is not None:
                self.recent_errors.add(line)

    def _mixed(self, data: bytes) -> None:
        now = time.monotonic()
        dropped: dict[str, int] = {}
        for raw in data.split(b"\n"):
            key = next((k for needle, k in _KEYS if needle in raw), None)
            if key is not None and self.gate.remaining(key, now) == 0:
                dropped[key] = dropped.get(key, 0) + 1
                continue
            self._line(raw)
        for key, n in dropped.items():
            for kind, count in self.gate.suppress(key, n, now).items():
                self.summarise(kind, count)
            self.skipped(n)

    def _line(self, raw: bytes) -> None:
        line = parse_line(clip(raw))
        if line is None:
            return
        self.recent_errors.add(line)
        if "bind: address already in use" in line.message:
            self.bind_failed = True
        if line.message.startswith(HINT_MESSAGES):
            self.hint()
        elif line.message == REGISTERED_MESSAGE:
            self.registered()
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
