"""cloudflared-sim log output, shaped like cloudflared's zerolog output.

Everything goes to stderr (and, with ``--logfile``/``--log-directory``, also to a file):

* ``--output json``: one compact JSON object per line, keys sorted; always ``level``,
  ``message`` and ``time`` (RFC 3339 UTC, whole seconds) plus the event's fields.
* ``--output default``: console text without colour,
  ``2026-11-27T02:56:27Z INF Starting tunnel tunnelID=<uuid>``.

Writes are synchronous, like cloudflared's: a full pipe blocks the writer. If the reader end
of stderr is gone, the process dies by SIGPIPE on its next write, as a Go program does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from typing import Any

LEVELS = {"debug": 0, "info": 1, "warn": 2, "error": 3, "fatal": 4}
_CONSOLE_LEVEL = {"debug": "DBG", "info": "INF", "warn": "WRN", "error": "ERR", "fatal": "FTL"}
_LEVEL_ALIASES = {"warning": "warn", "trace": "debug", "panic": "fatal"}


def parse_level(text: str) -> str:
    """A --loglevel value as cloudflared understands it; unknown values mean info."""
    name = text.strip().lower()
    name = _LEVEL_ALIASES.get(name, name)
    return name if name in LEVELS else "info"


def go_duration(seconds: float) -> str:
    """Format like Go's time.Duration.String(): 0s, 500ms, 2s, 1m4s, 1h0m0s."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    nanos = round(abs(seconds) * 1e9)
    if nanos < 1_000:
        return f"{sign}{nanos}ns"
    if nanos < 1_000_000:
        return f"{sign}{_trim(nanos / 1e3)}µs"
    if nanos < 1_000_000_000:
        return f"{sign}{_trim(nanos / 1e6)}ms"
    hours, rest = divmod(nanos, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    secs = _trim(rest / 1e9)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def _console_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    if text == "" or any(c in text for c in ' ="\\') or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)
    return text


class CfLogger:
    def __init__(
        self,
        output: str = "default",
        level: str = "info",
        logfile: str | None = None,
        fd: int = 2,
    ) -> None:
        self.is_json = output == "json"
        self.min_level = LEVELS[parse_level(level)]
        self._fd = fd
        self._file_fd: int | None = None
        if logfile:
            try:
                self._file_fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as exc:
                self._file_fd = None
                self.error("Failed to open log file", error=f"{logfile}: {exc.strerror}")

    @property
    def fd(self) -> int:
        return self._fd

    def format(self, level: str, message: str, fields: dict[str, Any]) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.is_json:
            record = dict(fields)
            record.update(level=level, message=message, time=stamp)
            return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
        parts = [stamp, _CONSOLE_LEVEL[level], message]
        parts.extend(f"{k}={_console_value(v)}" for k, v in sorted(fields.items()))
        return " ".join(parts)

    def log(self, level: str, message: str, **fields: Any) -> None:
        if LEVELS[level] < self.min_level:
            return
        data = (self.format(level, message, fields) + "\n").encode()
        write_all(self._fd, data)
        if self._file_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._file_fd, data)

    def debug(self, message: str, **fields: Any) -> None:
        self.log("debug", message, **fields)

    def info(self, message: str, **fields: Any) -> None:
        self.log("info", message, **fields)

    def warn(self, message: str, **fields: Any) -> None:
        self.log("warn", message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self.log("error", message, **fields)

    def close(self) -> None:
        if self._file_fd is not None:
            os.close(self._file_fd)
            self._file_fd = None


def write_all(fd: int, data: bytes) -> None:
    """Blocking write of all of data; a closed reader kills the process by SIGPIPE (Go rule)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        except BrokenPipeError:
            die_by_sigpipe()
        except OSError:
            return
        view = view[written:]


def die_by_sigpipe() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    os._exit(2)  # not reached: SIGPIPE's default action ends the process
