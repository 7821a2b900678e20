"""A replica's stderr as a file we tail, instead of a pipe: whole lines, bounded space.

A pipe dies with the daemon that reads it, and cloudflared then dies of SIGPIPE on its next
log line: replicas could not outlive a daemon restart. So each replica writes its stderr to
an O_APPEND file in runtime_dir (tmpfs under systemd), and the daemon, whichever daemon is
running, tails it.

Space stays bounded without ever moving the writer, so no line is ever split or merged:

- **Behind the reader, holes.** What has been read is punched out of the file
  (``fallocate(FALLOC_FL_PUNCH_HOLE)``): the file's length keeps growing (it is sparse), its
  blocks do not. Truncating instead (what this module used to do) races the writer: the bytes
  appended between the last read and the truncation were lost mid-line, and the next read began
  inside a line.
- **Ahead of the reader, a ceiling.** The replica's RLIMIT_FSIZE is kept ``budget_bytes`` past
  the read offset (:func:`raise_ceiling`). While no daemon reads (a restart, a crash loop), the
  replica can write at most that much more; then its writes fail with EFBIG (Go and Python
  ignore SIGXFSZ) and it runs on without logging. The next daemon resumes where the holes end,
  and reports the backlog as a summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import resource
from collections.abc import Callable
from pathlib import Path

from tunnelkeeper.supervise.launch import BUDGET_BYTES, mark_path, raise_ceiling
from tunnelkeeper.supervise.logwatch import until_written
from tunnelkeeper.tasks import until_beat

MAX_LINE_BYTES = 16 * 1024
MIN_READ_GAP_SECONDS = 0.02
# a read this large (~1.6 MB/s at the minimum gap) means a flood: then read twice a second
FLOOD_BYTES = 32 * 1024
FLOOD_READ_SECONDS = 0.5
SKIM_KEEP_BYTES = 64 * 1024
READ_CHUNK = 1024 * 1024
PUNCH_EVERY_BYTES = 1024 * 1024
_BLOCK = 4096
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


CUT_MARK = b" [line cut at 16 KiB]"


def clip(raw: bytes) -> bytes:
    """A line as it may be relayed: at most MAX_LINE_BYTES, a cut marked."""
    return raw if len(raw) <= MAX_LINE_BYTES else raw[:MAX_LINE_BYTES] + CUT_MARK


def punch_hole(fd: int, length: int) -> bool:
    """Free the blocks of [0, length) (rounded down to a block); False if unsupported."""
    length -= length % _BLOCK
    if length <= 0:
        return True
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, 0, length) == 0:
        return True
    if ctypes.get_errno() in (errno.EOPNOTSUPP, errno.ENOSYS):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def _size(path: Path, default: int) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return default


def write_mark(path: Path, offset: int) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(mark_path(path), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.pwrite(fd, b"%020d" % offset, 0)
        finally:
            os.close(fd)


def read_mark(path: Path) -> int | None:
    try:
        text = mark_path(path).read_bytes()[:20]
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def first_data(path: Path) -> int:
    """Where the unread part of a file begins: the end of the punched holes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        return os.lseek(fd, 0, os.SEEK_DATA)
    except OSError:  # ENXIO: no data at all (all holes, or empty)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


class LogTail:
    """Feeds blocks of whole lines to ``on_block(data, backlog)`` (a line that arrived whole
    may be longer than MAX_LINE_BYTES: whoever emits it applies :func:`clip`);
    ``on_skip(lines, bytes)`` accounts for what it had to drop (an over-long line's rest, a
    partial line at a resume).

    ``resume=True`` (adoption): start where the previous daemon's holes end; everything from
    there to the current end was written while no daemon read it, and is passed as backlog.
    """

    def __init__(
        self,
        path: Path,
        on_block: Callable[[bytes, bool], None],
        on_skip: Callable[[int, int], None] = lambda lines, size: None,
        *,
        on_unread: Callable[[int], None] = lambda size: None,
        pid: int | None = None,
        budget_bytes: int = BUDGET_BYTES,
        resume: bool = False,
        interval_seconds: float = 1.0,
        punch_every_bytes: int = PUNCH_EVERY_BYTES,
    ) -> None:
        self.path, self.on_block, self.on_skip = path, on_block, on_skip
        self.on_unread = on_unread
        self.pid, self.budget_bytes = pid, budget_bytes
        self.interval_seconds = interval_seconds
        self.punch_every_bytes = punch_every_bytes
        self.offset = 0
        self.punched = 0
        self.can_punch = True
        self._buf = b""
        self._dropping = False
        self._backlog_until = 0
        # offsets where the writer hit its ceiling: its last write there may have been cut
        # short, so a new line starts at each, whatever came before it
        self._cuts: list[int] = []
        self.ceiling = self._current_ceiling()
        if resume:
            self.offset = first_data(path)
            self._dropping = self.offset > 0  # the holes end on a block, not a line
            done = read_mark(path)
            if done is not None and self.offset <= done:  # exactly where the last reader was
                self.offset, self._dropping = done, False
            with contextlib.suppress(OSError):
                self._backlog_until = path.stat().st_size
                if self.ceiling is not None and self._backlog_until >= self.ceiling:
                    self._cuts.append(self.ceiling)

    def _current_ceiling(self) -> int | None:
        if self.pid is None:
            return None
        try:
            soft, _ = resource.prlimit(self.pid, resource.RLIMIT_FSIZE)
        except (OSError, ValueError):
            return None
        return None if soft == resource.RLIM_INFINITY else soft

    def _raise_ceiling(self, size: int) -> None:
        """Move the writer's ceiling up to ``budget_bytes`` past the read offset. Whether the
        writer ran into the old ceiling (its last line there cut short, so a new line starts at
        it) is judged from the file's size just before the raise and just after it: a size read
        earlier (before a long read) would miss a writer that reached the ceiling in between,
        and its cut line would be joined to the next."""
        if self.pid is None:
            return
        old = self.ceiling
        before = _size(self.path, size)
        raise_ceiling(self.pid, self.offset, self.budget_bytes)
        self.ceiling = self.offset + self.budget_bytes
        if old is not None and (before >= old or _size(self.path, 0) == old):
            # it ran into the ceiling (maybe mid-line): a new line starts there
            if self.offset >= old:
                self._cut_here()  # read up to it already: the pending bytes are that cut line
            else:
                self._cuts.append(old)

    def read_available(self, limit: int | None = None) -> int:
        """Relay the whole lines written since the last call (at most ``limit`` bytes of them:
        the event loop must not wait on a backlog); returns bytes read."""
        try:
            size = os.stat(self.path).st_size
            if size == self.offset:
                return 0  # the common case, one cheap syscall
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return 0
        total = 0
        try:
            size = os.fstat(fd).st_size
            if size < self.offset:  # a fresh file (a new replica on the same path)
                self.offset = self.punched = 0
                self._cuts.clear()
            end = size if limit is None else min(size, self.offset + limit)
            while self.offset < end:
                stop = min(end, self.offset + READ_CHUNK)
                cut = next((c for c in self._cuts if self.offset < c <= stop), None)
                chunk = os.pread(fd, (cut or stop) - self.offset, self.offset)
                if not chunk:
                    break
                backlog = self.offset < self._backlog_until
                self.offset += len(chunk)
                total += len(chunk)
                self._feed(chunk, backlog)
                if cut is not None and self.offset == cut:
                    self._cut_here()
            if self.can_punch and self.offset - self.punched >= self.punch_every_bytes:
                # not the pending partial line's head: a daemon killed now leaves it for the
                # next to read whole from the mark (the holes must end at or before it)
                self.can_punch = punch_hole(fd, self.offset - len(self._buf))
                self.punched = self.offset
        finally:
            os.close(fd)
        self._raise_ceiling(size)
        if total and not self._dropping:
            write_mark(self.path, self.offset - len(self._buf))
        return total

    def skim(self) -> int:
        """Under a flood, leave all but the last SKIM_KEEP_BYTES of what was written unread:
        they are punched out unexamined and reported as a byte count (``on_unread``); the line
        cut by the jump is dropped up to its end and counted as skipped. Returns bytes left
        unread. What is kept is read as usual: the flood's latest lines, and its cause."""
        unread = _size(self.path, self.offset) - self.offset - SKIM_KEEP_BYTES
        if unread <= 0:
            return 0
        if self._buf and not self._dropping:
            self.on_skip(1, len(self._buf))
        self._buf, self._dropping = b"", True
        self.offset += unread
        self._cuts = [c for c in self._cuts if c > self.offset]
        self.on_unread(unread)
        return unread

    def _cut_here(self) -> None:
        """A line the writer could not finish (its ceiling): count it, start afresh."""
        self._cuts = [c for c in self._cuts if c > self.offset]
        if self._buf or self._dropping:
            self.on_skip(1, len(self._buf))
        self._buf, self._dropping = b"", False

    def _feed(self, chunk: bytes, backlog: bool) -> None:
        if self._buf and not self._dropping:
            # finish the pending line with the head of this chunk (a small copy), not by
            # copying the whole chunk behind it
            first = chunk.find(b"\n")
            if first < 0:
                data = self._buf + chunk
            else:
                self._buf += chunk[: first + 1]
                if len(self._buf) > MAX_LINE_BYTES + 1:
                    self.on_block(self._buf[:MAX_LINE_BYTES] + CUT_MARK + b"\n", backlog)
                    self.on_skip(0, len(self._buf) - MAX_LINE_BYTES)
                else:
                    self.on_block(self._buf, backlog)
                self._buf = b""
                data = chunk[first + 1 :]
        else:
            data = self._buf + chunk if self._buf else chunk
        if self._dropping:  # the rest of a line we could not keep: up to its newline
            nl = data.find(b"\n")
            if nl < 0:
                self._buf = b""
                return
            self.on_skip(1, nl + 1)
            data, self._dropping = data[nl + 1 :], False
        last = data.rfind(b"\n")
        if last >= 0:
            self.on_block(data[: last + 1], backlog)
        rest = data[last + 1 :]
        if len(rest) > MAX_LINE_BYTES:  # a line too long to hold: a marked cut, the rest skipped
            self.on_block(rest[:MAX_LINE_BYTES] + CUT_MARK + b"\n", backlog)
            self._dropping, rest = True, b""
        self._buf = rest

    def flush(self) -> None:
        """The last, unterminated line (the writer has exited)."""
        if self._buf and not self._dropping:
            self.on_block(self._buf[:MAX_LINE_BYTES] + b"\n", False)
        self._buf = b""

    async def run(self) -> None:
        """Tail until cancelled; then call :meth:`finish` for the last lines."""
        loop = asyncio.get_running_loop()
        while True:
            read_at = loop.time()
            got = self.read_available(READ_CHUNK)
            if got >= READ_CHUNK:  # a backlog: keep reading, but let the loop breathe
                await asyncio.sleep(0)
                continue
            if got >= FLOOD_BYTES:
                # a flood (cloudflared's dial loop, ~3 MB/s of three messages): look at it
                # twice a second, on a beat shared with every other flooding replica, and only
                # at its latest SKIM_KEEP_BYTES. Waking for each write and examining every byte
                # cost the daemon 13% of a core for 4 flooding replicas; nothing in a flood is
                # news (its first lines, read at once, already asked for the probe)
                await asyncio.sleep(until_beat(FLOOD_READ_SECONDS))
                self.skim()
                continue
            # the next write (a lost connection is news at once), or the interval; but not
            # more often than MIN_READ_GAP, so a steady trickle of lines is read in batches
            await until_written(self.path, self.interval_seconds)
            gap = read_at + MIN_READ_GAP_SECONDS - loop.time()
            if gap > 0:
                await asyncio.sleep(gap)

    def finish(self) -> None:
        self.read_available()
        self.flush()
