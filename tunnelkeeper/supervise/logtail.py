"""A replica's stderr as a file we tail, instead of a pipe.

A pipe dies with the daemon that reads it, and cloudflared then dies of SIGPIPE on its next
log line: replicas could not outlive a daemon restart. So each replica writes its stderr to
an O_APPEND file in runtime_dir (tmpfs under systemd), and the daemon, whichever daemon is
running, tails it. The file is kept small by truncating it once it passes ``max_bytes``: the
writer's O_APPEND offset follows the truncation. Lines written in the instant between the last
read and a truncation are lost; they are log lines, and floods are summarised anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

MAX_LINE_BYTES = 16 * 1024
READ_CHUNK = 256 * 1024
DEFAULT_MAX_BYTES = 4 * 1024 * 1024


def open_for_child(path: Path) -> int:
    """The descriptor a child gets as stderr: append-only, private, fresh."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC | os.O_CLOEXEC, 0o600)


class LogTail:
    def __init__(
        self,
        path: Path,
        on_line: Callable[[bytes], None],
        *,
        from_end: bool = False,
        max_bytes: int = DEFAULT_MAX_BYTES,
        interval_seconds: float = 1.0,
    ) -> None:
        self.path = path
        self.on_line = on_line
        self.max_bytes = max_bytes
        self.interval_seconds = interval_seconds
        self.offset = 0
        if from_end:
            with contextlib.suppress(OSError):
                self.offset = path.stat().st_size
        self._buf = b""
        self._dropping = False

    def read_available(self) -> int:
        """Relay every complete line written since the last call; returns bytes read."""
        try:
            if os.stat(self.path).st_size == self.offset:
                return 0  # the common case, one cheap syscall
        except OSError:
            return 0
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return 0
        total = 0
        try:
            size = os.fstat(fd).st_size
            if size < self.offset:  # truncated by someone else: start over
                self.offset = 0
            while self.offset < size:
                chunk = os.pread(fd, min(READ_CHUNK, size - self.offset), self.offset)
                if not chunk:
                    break
                self.offset += len(chunk)
                total += len(chunk)
                self._split(chunk)
            if self.offset >= self.max_bytes:
                os.ftruncate(fd, 0)
                self.offset = 0
        finally:
            os.close(fd)
        return total

    def _split(self, chunk: bytes) -> None:
        buf = self._buf + chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > MAX_LINE_BYTES:
                    if not self._dropping:
                        self.on_line(buf[:MAX_LINE_BYTES] + b" [line truncated]")
                    self._dropping = True
                    buf = b""
                break
            line, buf = buf[:nl], buf[nl + 1 :]
            if self._dropping:
                self._dropping = False
                continue
            self.on_line(line[:MAX_LINE_BYTES])
        self._buf = buf

    def flush(self) -> None:
        """The last, unterminated line (the writer has exited)."""
        if self._buf and not self._dropping:
            self.on_line(self._buf[:MAX_LINE_BYTES])
        self._buf = b""

    async def run(self) -> None:
        """Tail until cancelled; then call :meth:`finish` for the last lines."""
        while True:
            busy = self.read_available() >= READ_CHUNK
            # a flood: keep reading, but let the loop breathe; else one cheap timer per interval
            await asyncio.sleep(0 if busy else self.interval_seconds)

    def finish(self) -> None:
        self.read_available()
        self.flush()
