"""The replica log relay at flood rate: whole lines in order, every gap accounted for, bounded
space, also while no daemon reads (a real writer process, the real tail, real hole punching and
a real RLIMIT_FSIZE ceiling)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.waiting import wait_until
from tunnelkeeper.supervise.launch import open_for_child, raise_ceiling
from tunnelkeeper.supervise.logtail import LogTail

pytestmark = pytest.mark.system

LINE = re.compile(rb"seq=(\d+) [x]{80}")
BUDGET = 1024 * 1024
# Writes one sequence-numbered line per write (like a logger), as fast as it can, to fd 2;
# writes the kernel refuses (EFBIG at the ceiling) are counted, not retried: ends on stdin EOF.
WRITER = textwrap.dedent(
    """
    import os, select, sys
    failed = 0
    n = 0
    while not select.select([0], [], [], 0)[0]:
        for _ in range(500):
            try:
                os.write(2, b"seq=%d %s\\n" % (n, b"x" * 80))
            except OSError:
                failed += 1
            n += 1
    print(n, failed, flush=True)
    """
)


class Reader:
    def __init__(self, path: Path, pid: int, *, resume: bool) -> None:
        self.lines: list[bytes] = []
        self.skipped = 0
        self.skipped_elsewhere = 0  # skips not at a ceiling the writer ran into
        self.ceilings: set[int | None] = set()
        self.tail = LogTail(
            path,
            self._block,
            self._skip,
            pid=pid,
            budget_bytes=BUDGET,
            resume=resume,
            punch_every_bytes=64 * 1024,
        )
        self.ceilings.add(self.tail.ceiling)

    def read(self) -> None:
        self.tail.read_available()
        self.ceilings.add(self.tail.ceiling)

    def _block(self, data: bytes, backlog: bool) -> None:
        assert data.endswith(b"\n")
        self.lines.extend(data[:-1].split(b"\n"))

    def _skip(self, lines: int, size: int) -> None:
        self.skipped += lines
        if self.tail.offset not in self.ceilings:
            self.skipped_elsewhere += lines


def start_writer(path: Path, script: str) -> subprocess.Popen[str]:
    """``script`` in a Python child whose stderr is a replica log at ``path``, as the daemon
    opens it; its stdin and stdout are pipes to the test."""
    fd = open_for_child(path)
    try:
        return subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=fd,
            text=True,
        )
    finally:
        os.close(fd)


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_flood_rate_relay_is_whole_ordered_accounted_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "replica.log"
    writer = start_writer(path, WRITER)
    assert writer.stdin is not None and writer.stdout is not None
    raise_ceiling(writer.pid, 0, BUDGET)
    bound = BUDGET + 2 * 1024 * 1024  # the budget ahead, plus what one read pass holds
    peak = 0
    try:
        first = Reader(path, writer.pid, resume=False)
        for _ in range(3):  # several punch cycles with the daemon reading
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                first.read()
                peak = max(peak, allocated(path))
        # the daemon is killed (-9): nobody reads; the writer runs into its ceiling
        wait_until(lambda: path.stat().st_size >= first.tail.offset + BUDGET, timeout=20)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            peak = max(peak, allocated(path))
            time.sleep(0.05)
        # the next daemon adopts the replica and resumes where the holes end
        second = Reader(path, writer.pid, resume=True)
        for _ in range(2):
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                second.read()
                peak = max(peak, allocated(path))
    finally:
        writer.stdin.close()
        out = writer.stdout.read()
        writer.wait(timeout=10)
        writer.stdout.close()
    second.tail.finish()
    written, failed = (int(x) for x in out.split())

    seqs = []
    for reader in (first, second):
        for line in reader.lines:
            m = LINE.fullmatch(line)
            assert m, line[:120]  # whole: never split, never two glued together
            seqs.append(int(m.group(1)))
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, no repeats
    # Every gap is accounted for: refused by the ceiling while nobody read, or skipped as a
    # partial line where the second reader resumed.
    missing = written - len(seqs)
    assert missing == failed + first.skipped + second.skipped
    assert failed > 0  # the ceiling did bound the writer while no one read
    # The only lines lost whole or in part are those the writer's ceiling cut short (one each
    # time it ran into it: while nobody read, and whenever a busy machine let the writer get a
    # budget ahead of the reader). The resume loses none: its holes end at or before the mark.
    assert first.skipped_elsewhere == 0 and second.skipped_elsewhere == 0
    assert peak <= bound, f"{peak} bytes allocated, bound {bound}"
    assert path.stat().st_size > 4 * bound  # the file really was much larger than its blocks


# Writes a 3000-byte line, then a 2000-byte one that the ceiling (4096) cuts short; on a line
# from stdin, one more whole line.
CUT_WRITER = textwrap.dedent(
    """
    import os, sys
    sys.stdin.readline()
    os.write(2, b"a" * 2999 + b"\\n")
    print(os.write(2, b"b" * 1999 + b"\\n"), flush=True)
    sys.stdin.readline()
    os.write(2, b"next\\n")
    print("done", flush=True)
    sys.stdin.readline()
    """
)


def test_a_line_cut_at_the_ceiling_where_the_reader_stands_is_not_glued_to_the_next(
    tmp_path: Path,
) -> None:
    """The reader catches up exactly to the ceiling the writer ran into: the cut line's bytes
    are counted as skipped, and the next line is relayed on its own (the flood test's rare
    ``…bbbseq=`` line)."""
    path = tmp_path / "replica.log"
    writer = start_writer(path, CUT_WRITER)
    assert writer.stdin is not None and writer.stdout is not None
    try:
        raise_ceiling(writer.pid, 0, 4096)
        reader = Reader(path, writer.pid, resume=False)
        reader.tail.budget_bytes = 4096
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert int(writer.stdout.readline()) == 4096 - 3000  # the kernel cut the second line
        assert reader.tail.read_available() == 4096
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "done"
        reader.tail.read_available()
    finally:
        writer.stdin.close()
        writer.wait(timeout=10)
        writer.stdout.close()
    assert reader.lines == [b"a" * 2999, b"next"]
    assert reader.skipped == 1


def test_a_skim_leaves_all_but_the_latest_lines_unread_and_accounts_for_every_byte(
    tmp_path: Path,
) -> None:
    """Under a flood the tail reads only the latest SKIM_KEEP_BYTES: what it jumps over is
    reported in bytes, the line the jump cuts is dropped whole, and every line relayed after
    it is whole and in order."""
    from tunnelkeeper.supervise.logtail import SKIM_KEEP_BYTES

    path = tmp_path / "replica.log"
    fd = open_for_child(path)
    line = b"seq=%d " + b"x" * 80 + b"\n"
    data = b"".join(line % i for i in range(20000))  # ~1.8 MB: far more than is kept
    os.write(fd, data)
    unread: list[int] = []
    lines: list[bytes] = []
    skipped: list[int] = []
    tail = LogTail(
        path,
        lambda block, backlog: lines.extend(block[:-1].split(b"\n")),
        lambda n, size: skipped.append(n),
        on_unread=unread.append,
    )
    tail.read_available(4096)  # it had begun reading: a partial line is pending
    before = list(lines)
    assert tail.skim() == len(data) - 4096 - SKIM_KEEP_BYTES
    tail.read_available()
    os.write(fd, line % 20000)
    tail.read_available()
    os.close(fd)
    after = lines[len(before) :]
    seqs = [int(m.group(1)) for m in map(LINE.fullmatch, after) if m]
    assert len(seqs) == len(after)  # whole lines only
    assert seqs == list(range(seqs[0], 20001))  # in order, to the last one written
    assert sum(unread) == len(data) - 4096 - SKIM_KEEP_BYTES
    assert sum(skipped) == 2  # the pending partial line, and the one the jump cut
    assert 0 < len(after) * len(line % 1) < SKIM_KEEP_BYTES + len(line % 20000)


def test_a_partial_line_across_a_block_is_not_punched_so_the_next_daemon_relays_it_whole(
    tmp_path: Path,
) -> None:
    """The daemon reads and punches while a line is half written across a block boundary, and
    is killed: the next one resumes at the mark and relays that line whole, losing nothing."""
    path = tmp_path / "replica.log"
    fd = open_for_child(path)
    whole = b"w" * 4050 + b"\n"  # ends 45 bytes before the 4096-byte block boundary
    long_line = b"L" * 200 + b"\n"
    os.write(fd, whole + long_line[:100])  # the long line straddles the boundary, unfinished
    lines: list[bytes] = []
    skipped: list[int] = []

    def tail() -> LogTail:
        return LogTail(
            path,
            lambda block, backlog: lines.extend(block[:-1].split(b"\n")),
            lambda n, size: skipped.append(n),
            resume=True,
            punch_every_bytes=1,
        )

    first = tail()
    first.read_available()
    assert lines == [whole[:-1]]
    del first  # killed, its pending partial line with it
    os.write(fd, long_line[100:])
    os.close(fd)
    tail().read_available()
    assert lines == [whole[:-1], long_line[:-1]] and skipped == []
